"""Fault drills: kill the tools at random instants and check what they leave on disk.

    python tools/fault_drills.py export [--rounds 50]   # SIGKILL pg-export, two models, one --out
    python tools/fault_drills.py run [--rounds 50]      # SIGKILL / SIGTERM pg-run --jsonl

``export``: pg-export into the same --out and --name, alternating two models
(the bundled Fashion-MNIST BagNet with --fp16, and a random-init smallbagnet
without it, so each re-export also removes a file of the other's set); each
round exports the model whose set is not in place, so the old and the new
set always differ. Half
the rounds are killed at a uniform instant over the whole run; the other half
are aimed inside the commit (PATCHGUARD_COMMIT_STEP_DELAY spreads its renames
over time; the kill comes at a random instant after the commit journal
appears). After each kill, the recovery that the next export or load runs
first is applied, then the final names must hold one whole set: every file
matches the manifest's SHA-256, no other NAME.* file exists, and the set is
the previous one or the new one, never a mix. ``run``: pg-run --jsonl on a
long generated video, killed alternately by SIGKILL and SIGTERM at a random
instant after its first row; every line of every file must parse and the
frame numbers run 0..n-1. Prints a line per round and a JSON summary last;
exits 1 on any violation.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

EXPORT = "import sys; from patchguard.export.cli import main; sys.exit(main())"
RUN = "import sys; from patchguard.runtime.cli.run import main; sys.exit(main())"
MODELS = {
    "A": ["--fp16"],
    "B": ["--arch", "smallbagnet", "--random-init", "--num-classes", "10"],
}


def export_args(out: Path, model: str) -> list[str]:
    return [sys.executable, "-c", EXPORT, *MODELS[model], "--out", str(out), "--name", "m",
            "--no-engine", "--parity-n", "2"]


def arch_and_digest(out: Path) -> tuple[str, str]:
    from patchguard.runtime.artifacts import read_manifest

    manifest = read_manifest(out, "m")
    assert manifest is not None
    return ",".join(sorted(manifest["files"])), manifest["files"]["m.onnx"]["sha256"]


def check_set(out: Path) -> dict[str, Any]:
    """The whole set under the final names, or an AssertionError saying what is wrong."""
    from patchguard.runtime.artifacts import read_manifest, verify_set

    wrong = verify_set(out, "m")
    assert not wrong, wrong
    manifest = read_manifest(out, "m")
    assert manifest is not None
    present = sorted(p.name for p in out.iterdir() if p.name.startswith("m."))
    assert present == sorted([*manifest["files"], "m.manifest.json"]), present
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith(".m."))
    assert not hidden, hidden
    return manifest


def drill_export(rounds: int, seed: int, folder: Path) -> dict[str, Any]:
    from patchguard.runtime.artifacts import STEP_DELAY_ENV, recover

    rng = random.Random(seed)
    out = folder / "out"
    # One full export of each model: its file set and duration (the kill instants' range).
    known: dict[str, str] = {}
    duration: dict[str, float] = {}
    for model in ("B", "A"):
        start = time.monotonic()
        subprocess.run(export_args(out, model), check=True, capture_output=True)
        duration[model] = time.monotonic() - start
        known[model] = arch_and_digest(out)[1]
    previous = check_set(out)
    counts = {"old set": 0, "new set": 0, "journal left by the kill": 0, "inside the commit": 0,
              "uniform": 0, "finished before the kill": 0}
    violations = []
    for i in range(rounds):
        # Always the model whose set is NOT in place, so "old" and "new" can be told apart.
        model = "B" if previous["files"]["m.onnx"]["sha256"] == known["A"] else "A"
        aimed = i % 4 >= 2  # rounds 2, 3 of every 4 aim inside the commit
        env = dict(os.environ, **({STEP_DELAY_ENV: "0.05"} if aimed else {}))
        proc = subprocess.Popen(export_args(out, model), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if aimed:
            deadline = time.monotonic() + 600
            while not (out / ".m.commit.json").exists() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.45))  # up to 9 steps of 0.05 s
            counts["inside the commit"] += 1
        else:
            time.sleep(rng.uniform(0.0, 1.1 * duration[model]))
            counts["uniform"] += 1
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts["finished before the kill"] += finished
        journal = (out / ".m.commit.json").exists()
        counts["journal left by the kill"] += journal
        recover(out, "m")
        try:
            manifest = check_set(out)
            if manifest["files"] == previous["files"]:
                outcome = "old set"
            else:
                assert manifest["files"]["m.onnx"]["sha256"] == known[model], "new set of another model"
                outcome = "new set"
            counts[outcome] += 1
        except AssertionError as exc:
            outcome = f"VIOLATION: {exc}"
            violations.append(outcome)
            manifest = previous
        print(f"round {i + 1:2d}: model {model}, {'aimed at the commit' if aimed else 'uniform'}, "
              f"journal {'yes' if journal else 'no'} -> {outcome}", flush=True)
        previous = manifest
    return {"drill": "export", "rounds": rounds, **counts, "violations": len(violations),
            "seconds_per_export": {k: round(v, 1) for k, v in duration.items()}}


def make_video(path: Path, frames: int = 3000) -> Path:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for _ in range(30)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 64))
    for i in range(frames):
        writer.write(pool[i % len(pool)])
    writer.release()
    return path


def default_model(folder: Path) -> Path:
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import DEFAULT_WEIGHTS

    model, record = DEFAULT_WEIGHTS.load()
    return save_onnx(export_onnx(model, record), folder / "model.onnx")


def drill_run(rounds: int, seed: int, folder: Path, model: Optional[Path]) -> dict[str, Any]:
    rng = random.Random(seed)
    model = model or default_model(folder)
    video = make_video(folder / "long.avi")
    counts: dict[str, Any] = {"SIGKILL": 0, "SIGTERM": 0, "files": 0, "lines": 0, "exit_codes": {}}
    violations = []
    for i in range(rounds):
        sig = (signal.SIGKILL, signal.SIGTERM)[i % 2]
        out = folder / f"kill{i}.jsonl"
        proc = subprocess.Popen([sys.executable, "-c", RUN, "--engine", str(model), "--source",
                                 str(video), "--jsonl", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (out.exists() and out.stat().st_size) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(sig)
        _, stderr = proc.communicate()
        name = signal.Signals(sig).name
        counts[name] += 1
        codes = counts["exit_codes"].setdefault(name, {})
        codes[str(proc.returncode)] = codes.get(str(proc.returncode), 0) + 1
        try:
            data = out.read_bytes()
            assert data.endswith(b"\n"), "the last line is cut off"
            lines = [json.loads(line) for line in data.decode().splitlines()]
            rows = [row for row in lines if row.get("kind") != "header"]
            assert [r["frame"] for r in rows] == list(range(len(rows))), "frame numbers have gaps"
            if sig == signal.SIGTERM:
                assert proc.returncode == 143, f"exit {proc.returncode}"
                assert f"{len(rows)} rows written" in stderr, "no summary after SIGTERM"
            outcome = f"{len(rows)} lines, all parse"
            counts["files"] += 1
            counts["lines"] += len(rows)
        except (AssertionError, ValueError) as exc:
            outcome = f"VIOLATION: {exc}"
            violations.append(outcome)
        print(f"round {i + 1:2d}: {name} -> exit {proc.returncode}, {outcome}", flush=True)
    return {"drill": "run", "rounds": rounds, **counts, "violations": len(violations)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("drill", choices=["export", "run"])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", type=Path, default=None, help="run: model (default: exported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pg-drill-") as tmp:
        if args.drill == "export":
            summary = drill_export(args.rounds, args.seed, Path(tmp))
        else:
            summary = drill_run(args.rounds, args.seed, Path(tmp), args.engine)
    verdict = "never a mix" if args.drill == "export" else "every line of every file parses"
    if summary["violations"]:
        print(f"FAILED: {summary['violations']} violation(s)")
    else:
        print(f"OK: {verdict} ({args.rounds} kills)")
    print(json.dumps(summary))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
