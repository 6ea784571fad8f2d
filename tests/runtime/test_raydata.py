"""pg-certify --ray: Ray Data actors give the single-process report exactly, even when one dies.

Small subsets and 2 workers (Ray is slow to start on a shared 2-core
machine); the full test-set comparison is in the README with its command.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="needs the [ray] extra (ray[data])")
pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

PG_CERTIFY = [sys.executable, "-c", "from patchguard.runtime.cli.certify import main; main()"]


def _certify(model: Path, out: Path, *extra: str) -> None:
    done = subprocess.run([*PG_CERTIFY, "--model", str(model), "--data", "fashion-mnist", "--limit", "600",
                           "--patch-size", "3", "5", "--top-k", "3", "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def test_ray_report_equals_the_single_process_report(default_onnx: Path, tmp_path: Path) -> None:
    _certify(default_onnx, tmp_path / "plain.json")
    _certify(default_onnx, tmp_path / "ray.json", "--ray", "--ray-workers", "2")
    plain, ray = (tmp_path / "plain.json").read_text(), (tmp_path / "ray.json").read_text()
    assert json.loads(plain)["n"] == 600
    assert ray == plain  # byte for byte: every defense, every patch size


def _actor_pids() -> list[int]:
    """Processes whose title names our actor class (Ray sets ray::MapWorker(MapBatches(ChunkInference)))."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "ChunkInference" in title and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def test_killing_a_worker_mid_run_changes_nothing(default_onnx: Path) -> None:
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.datasets import load_fashion_mnist
    from patchguard.runtime.preprocess import normalize
    from patchguard.runtime.raydata import infer_with_ray

    images = load_fashion_mnist("test")[0][:2000]
    killed: list[tuple[int, float]] = []
    finished = threading.Event()

    def kill_one() -> None:
        # Wait for the pool, let it work a little, then SIGKILL one actor.
        while not finished.is_set():
            pids = _actor_pids()
            if len(pids) >= 2:
                time.sleep(3.0)
                if finished.is_set():
                    return
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], time.monotonic()))
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    u = infer_with_ray(str(default_onnx), images, workers=2, chunk=25, threads=1)
    ended = time.monotonic()
    finished.set()
    killer.join(timeout=10)
    assert killed and killed[0][1] < ended, "the run ended before a worker could be killed"
    with open_backend(default_onnx, threads=1) as backend:
        expected = np.concatenate([backend.infer(normalize(images[i : i + 25], backend.record))
                                   for i in range(0, len(images), 25)])
    assert np.array_equal(u, expected)


def test_ray_is_refused_in_logits_mode(tmp_path: Path) -> None:
    np.save(tmp_path / "u.npy", np.zeros((1, 4, 4, 2), dtype=np.float32))
    done = subprocess.run([*PG_CERTIFY, "--logits", str(tmp_path / "u.npy"), "--window", "2", "--ray"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Error: --ray belongs to --model mode" in done.stderr
