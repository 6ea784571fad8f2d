"""Resident memory over a long run: 10,000 frames of a generated video through pg-run's loop.

    python benchmarks/pipeline_memory.py [--engine model.onnx] [--frames 10000]

Makes an MJPG video of Fashion-MNIST test images (upscaled to 112x112; random
frames when the dataset is missing), runs it through the same objects pg-run
uses (frame source, Pipeline, JSONL sink, summary) and prints the resident set
size (VmRSS) every 1,000 frames. Flat means no per-frame leak: compare the
start (after 200 warm-up frames) with the end. Without --engine the bundled
default model is exported first (needs torch).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def make_video(path: Path, count: int, size: int = 112) -> Path:
    import cv2

    from patchguard.runtime.datasets import fashion_mnist_available, load_fashion_mnist

    if fashion_mnist_available():
        images = load_fashion_mnist("test")[0]
    else:
        images = np.random.default_rng(0).integers(0, 256, size=(1000, 28, 28), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (size, size))
    for i in range(count):
        big = cv2.resize(images[i % len(images)], (size, size), interpolation=cv2.INTER_LINEAR)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def export_default(path: Path) -> Path:
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import DEFAULT_WEIGHTS

    model, record = DEFAULT_WEIGHTS.load()
    return save_onnx(export_onnx(model, record), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    from patchguard.runtime.pipeline import Pipeline, stream
    from patchguard.runtime.sinks import JsonlSink, RunSummary
    from patchguard.runtime.sources import open_source

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = args.engine or export_default(folder / "default.onnx")
        started = time.perf_counter()
        video = make_video(folder / "long.avi", args.frames)
        print(f"video: {args.frames} frames in {time.perf_counter() - started:.1f} s", flush=True)
        summary = RunSummary()
        sink = JsonlSink(folder / "frames.jsonl")
        start_rss = None
        samples = []
        with Pipeline.from_engine(engine) as pipeline, open_source(str(video)) as source:
            for item in stream(pipeline, source):
                summary.add(item.result)
                sink.write(item)
                done = summary.frames
                if done == args.warmup:
                    start_rss = rss_mib()
                if done % 1000 == 0:
                    samples.append((done, rss_mib()))
                    print(f"  frame {done:>6}: RSS {samples[-1][1]:.1f} MiB", flush=True)
        sink.close()
        summary.finish()
        end_rss = rss_mib()
        rows = len((folder / "frames.jsonl").read_text().splitlines())
    print(summary.text())
    print(f"rows written: {rows}")
    print(f"RSS after {args.warmup} warm-up frames: {start_rss:.1f} MiB; at the end: {end_rss:.1f} MiB; "
          f"growth {end_rss - start_rss:+.1f} MiB over {summary.frames - args.warmup} frames")
    first = dict(samples).get(1000)
    if first and samples[-1][0] > 1000:
        last, at = samples[-1][1], samples[-1][0]
        print(f"RSS at frame {at}: {last:.1f} MiB vs {first:.1f} MiB at frame 1000: "
              f"{100 * (last - first) / first:+.2f}%")
    return 0 if rows == summary.frames == args.frames else 1


if __name__ == "__main__":
    sys.exit(main())
