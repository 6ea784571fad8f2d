"""Speed of the view defenses per frame: DS / Mask-DS (28 bands) and crop voting.

For real Fashion-MNIST test frames through the shipped models, exported by
the project's exporter and run by onnxruntime (CPU), it prints the median
and p95 ms per frame of: view generation (numpy), scoring all views (one
batch), and each rule's decision + certificate. Frames are taken in test-set
order, certified or not, so the rules see the hard cases too.

    python benchmarks/smoothing.py            # 200 frames per model
    python benchmarks/smoothing.py --short    # CI: 20 frames
    python benchmarks/smoothing.py --model ds.onnx --model crops.onnx
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from patchguard.runtime.backends import open_backend
from patchguard.runtime.datasets import load_fashion_mnist
from patchguard.runtime.preprocess import normalize
from patchguard.runtime.smoothing_runners import runners_for

SHIPPED = ("fashion_mnist_ds", "fashion_mnist_crops")  # bundled weights (patchguard.models.WEIGHTS)


def export_shipped(folder: Path) -> list[Path]:
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import WEIGHTS

    paths = []
    for name in SHIPPED:
        model, record = WEIGHTS[name].load()
        paths.append(save_onnx(export_onnx(model, record), folder / f"{name}.onnx"))
    return paths


def stats(times: list[float]) -> str:
    ms = 1e3 * np.asarray(times)
    return f"median {np.median(ms):.3f} ms, p95 {np.percentile(ms, 95):.3f} ms"


def bench(path: Path, frames: int, patch: int, threads: int) -> None:
    images, _ = load_fashion_mnist("test")
    with open_backend(path, threads=threads) as backend:
        record = backend.record
        runners = runners_for(record, (patch, patch), backend.infer)
        first = next(iter(runners.values()))
        x = normalize(images[:frames], record)
        generate, score = [], []
        decide: dict[str, list[float]] = {name: [] for name in runners}
        backend.infer(first.all_views(x[:1]))  # warm-up
        for n in range(frames):
            t0 = time.perf_counter()
            views = first.all_views(x[n : n + 1])
            t1 = time.perf_counter()
            logits = backend.infer(views).reshape(1, first.views_per_frame, -1)
            t2 = time.perf_counter()
            generate.append(t1 - t0)
            score.append(t2 - t1)
            for name, runner in runners.items():
                t3 = time.perf_counter()
                runner.decide(logits)
                decide[name].append(time.perf_counter() - t3)
        print(f"{path.name}: {record.defense.kind}, {first.views_per_frame} views per frame, "
              f"{patch} px patch, {frames} frames, {threads} threads")
        print(f"  generate views   {stats(generate)}")
        print(f"  score views      {stats(score)}")
        total = np.asarray(generate) + np.asarray(score)
        print(f"  generate+score   {stats(list(total))}")
        for name, times in decide.items():
            print(f"  {name:<8} decide+certify {stats(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="20 frames per model (CI)")
    parser.add_argument("--model", action="append", type=Path, help="an exported view model (repeatable)")
    parser.add_argument("--patch", type=int, default=3, help="patch side in model pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    frames = 20 if args.short else 200
    with tempfile.TemporaryDirectory() as tmp:
        models = args.model or export_shipped(Path(tmp))
        for path in models:
            bench(path, frames, args.patch, args.threads)


if __name__ == "__main__":
    main()
