"""pg-bench --source against pg-run on the same clip: do the two agree on certification time?

    python benchmarks/bench_vs_run.py [--engine model.onnx] [--frames 120] [--short]

Makes the demo clip (examples/make_clip.py on the bundled Fashion-MNIST
sample, 112x112), runs ``pg-run --jsonl`` on it and ``pg-bench --source`` on
it, and prints the p50 of each per-frame stage from both, with the ratio.
They time the same Pipeline calls, so the ratio should sit near 1 (on a busy
shared machine, noise moves it). Without --engine the bundled default model is
exported first (needs torch). Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "fashion-mnist-test"


def command(module: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; from {module} import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{module} failed:\n{done.stderr}")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--short", action="store_true", help="40 frames (CI)")
    args = parser.parse_args()
    frames = 40 if args.short else args.frames
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine = args.engine
        if engine is None:
            from patchguard.export.onnx import export_onnx
            from patchguard.export.onnxfile import save_onnx
            from patchguard.models import DEFAULT_WEIGHTS

            engine = save_onnx(export_onnx(*DEFAULT_WEIGHTS.load()), work / "model.onnx")
        clip = work / "clip.avi"
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_clip.py"), str(SAMPLE), str(clip),
                        "--frames", str(frames), "--size", "112"], check=True, capture_output=True)
        rows = work / "frames.jsonl"
        command("patchguard.runtime.cli.run", "--engine", str(engine), "--source", str(clip),
                "--jsonl", str(rows), "--quiet")
        lines = [json.loads(line) for line in rows.read_text().splitlines()]
        frames_run = [r for r in lines if r.get("kind") == "frame"][2:]  # pg-bench skips 2 warm-up frames
        report = json.loads(command("patchguard.runtime.cli.bench", "--engine", str(engine), "--source",
                                    str(clip), "--json", "-", "--quiet").stdout)
    print(f"clip: {frames} frames 112x112; pg-run rows timed: {len(frames_run)}, "
          f"pg-bench frames timed: {report['frames']}")
    print(f"{'stage':<9}{'pg-run p50 ms':>15}{'pg-bench p50 ms':>17}{'bench/run':>11}")
    for key in ("pre", "infer", "certify"):
        run_p50 = float(np.percentile([r["latency_ms"][key] for r in frames_run], 50))
        bench_p50 = report["ms_per_frame"][key]["p50"]
        print(f"{key:<9}{run_p50:>15.4f}{bench_p50:>17.4f}{bench_p50 / run_p50:>11.3f}")
    certify_ms = report["ms_per_frame"]["certify"]
    print(f"pg-bench certify p95 {certify_ms['p95']:.4f} ms, "
          f"p99 {certify_ms['p99']:.4f} ms, max {certify_ms['max']:.4f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
