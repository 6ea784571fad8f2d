"""pg-certify --ray: Ray Data reads the set, actors certify it, and the report is the
single-process report exactly, for every input kind, view defenses too, even when a
worker dies.

Small subsets and 2 workers (Ray is slow to start on a shared 2-core machine): one
Ray instance for the in-process tests, one pg-certify run for the command itself;
the full test-set comparison is in the README with its command.
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
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="needs the [ray] extra (ray[data])")
pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

PG_CERTIFY = [sys.executable, "-c", "from patchguard.runtime.cli.certify import main; main()"]
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for the in-process tests (2 actors + the read tasks)."""
    import ray

    from patchguard.runtime.raydata import start_ray

    start_ray(ray, None, 3)
    yield
    ray.shutdown()


def _options(record: Any, top_k: int = 3) -> Any:
    from patchguard.runtime.evaluate import EvaluationOptions

    return EvaluationOptions(receptive_field=record.receptive_field, stride=record.stride, top_k=top_k)


def _plain_report(model: Path, images: np.ndarray, labels: np.ndarray, sizes: list[int]) -> str:
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.evaluate import evaluate
    from patchguard.runtime.preprocess import normalize

    with open_backend(model, threads=1) as backend:
        u = np.concatenate([backend.infer(normalize(images[i : i + 256], backend.record))
                            for i in range(0, len(images), 256)])
        return json.dumps(evaluate(u, labels, sizes, _options(backend.record)))


def _ray_report(model: Path, data: str, limit: int, sizes: list[int], **kwargs: Any) -> tuple[str, dict]:
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.datasets import open_labelled
    from patchguard.runtime.evaluate import report_of
    from patchguard.runtime.raydata import certify_with_ray

    with open_backend(model) as backend:
        record = backend.record
    columns = certify_with_ray(open_labelled(data, record, limit=limit), str(model), sizes,
                               _options(record), threads=1, **kwargs)
    labels = columns.pop("label")
    logits = columns.pop("logits", None)
    return json.dumps(report_of(columns, sizes, _options(record))), {"labels": labels, "logits": logits}


def test_pg_certify_ray_report_equals_the_single_process_report(default_onnx: Path, tmp_path: Path) -> None:
    def certify(out: Path, *extra: str) -> None:
        done = subprocess.run([*PG_CERTIFY, "--model", str(default_onnx), "--data", "fashion-mnist",
                               "--limit", "600", "--patch-size", "3", "5", "--top-k", "3",
                               "--json", str(out), *extra], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    certify(tmp_path / "plain.json")
    certify(tmp_path / "ray.json", "--ray", "--ray-workers", "2")
    plain, ray = (tmp_path / "plain.json").read_text(), (tmp_path / "ray.json").read_text()
    assert json.loads(plain)["n"] == 600
    assert ray == plain  # byte for byte: every defense, every patch size
    assert _ray_actor_pids() == []  # no actor outlives the run


def test_tables_and_folders_on_ray_give_the_single_process_report(
        ray_cluster: None, default_onnx: Path, tmp_path: Path) -> None:
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from patchguard.runtime.datasets import load_fashion_mnist, load_labelled

    images, labels = load_fashion_mnist("test")
    images, labels = images[:300], labels[:300]
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    pq.write_table(pa.table({"image": [cv2.imencode(".png", im)[1].tobytes() for im in images],
                             "label": labels}), tmp_path / "set.parquet", row_group_size=70)
    folder = tmp_path / "folder"
    for n, (image, label) in enumerate(zip(images[:120], labels[:120])):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"c{label}" / f"{n:04d}.png"), image)
    (folder / "c0" / "0000-corrupt.png").write_bytes(b"not a png")  # skipped by both paths alike
    expected = _plain_report(default_onnx, images, labels, [2, 5])
    for data in ("fashion-mnist", tmp_path / "set.npz", tmp_path / "set.parquet"):
        # 100-image calls: other cuts than the single-process chunks (onnxruntime's CPU
        # output per image does not depend on the batch), chunks of 64 from the read.
        got, _ = _ray_report(default_onnx, str(data), 300, [2, 5], chunk=64, batch=100)
        assert got == expected, data
    found = load_labelled(str(folder), _record(default_onnx))
    assert len(found.labels) == 120
    got, columns = _ray_report(default_onnx, str(folder), 10_000, [2, 5], chunk=32)
    assert np.array_equal(columns["labels"], found.labels)
    assert got == _plain_report(default_onnx, found.images, found.labels, [2, 5])


def _record(model: Path) -> Any:
    from patchguard.runtime.backends import open_backend

    with open_backend(model) as backend:
        return backend.record


def test_view_defenses_on_ray_give_the_single_process_report(ray_cluster: None, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="exporting the shipped DS model needs torch (the [export] extra)")
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import load_checkpoint
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.datasets import open_labelled
    from patchguard.runtime.raydata import certify_with_ray
    from patchguard.runtime.view_evaluate import evaluate_views, runners, views_report

    model, record = load_checkpoint(WEIGHTS / "fashion_mnist_ds.pt")
    path = save_onnx(export_onnx(model, record), tmp_path / "ds.onnx")
    labelled = open_labelled("fashion-mnist", record, limit=96)
    images, labels = labelled.read(0, 96)
    with open_backend(path, threads=1) as backend:
        plain, _ = evaluate_views(backend, images, labels, [2, 4])
        counts = certify_with_ray(open_labelled("fashion-mnist", backend.record, limit=96), str(path),
                                  [2, 4], {}, threads=1, chunk=64)
        seconds = [float(counts.pop(f"{k}/seconds").sum()) for k in range(len(runners(backend, [2, 4])))]
        ray = views_report(backend, [2, 4], counts, seconds)
    for report in (plain, ray):  # time, which differs between any two runs
        for row in report["results"]:
            assert row.pop("ms_per_image") > 0
    assert json.dumps(ray) == json.dumps(plain)
    assert {row["rule"] for row in plain["results"]} == {"ds", "mask-ds"}
    # PatchCleanser's full prediction tables stay a single-process job: refused before Ray starts.
    done = subprocess.run([*PG_CERTIFY, "--model", str(path), "--data", "fashion-mnist", "--patch-size", "2",
                           "--dump", str(tmp_path / "t.npz"), "--ray"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Error: --dump runs without --ray" in done.stderr


def _ray_actor_pids() -> list[int]:
    """Processes whose title names our actor class (Ray sets ray::MapWorker(MapBatches(Certifier)))."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "MapBatches(Certifier)" in title and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def test_killing_a_worker_mid_run_changes_nothing(ray_cluster: None, default_onnx: Path) -> None:
    from patchguard.runtime.datasets import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    images, labels = images[:3000], labels[:3000]
    killed: list[tuple[int, float]] = []
    finished = threading.Event()
    earlier = set(_ray_actor_pids())  # idle actors of the earlier tests' runs, if still there

    def kill_one() -> None:
        # Wait for this run's pool, let it work a little, then SIGKILL one actor.
        while not finished.is_set():
            pids = [pid for pid in _ray_actor_pids() if pid not in earlier]
            if len(pids) >= 2:
                time.sleep(1.0)
                if finished.is_set():
                    return
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], time.monotonic()))
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    got, columns = _ray_report(default_onnx, "fashion-mnist", 3000, [3, 5], chunk=25, keep_logits=True)
    ended = time.monotonic()
    finished.set()
    killer.join(timeout=10)
    assert killed and killed[0][1] < ended, "the run ended before a worker could be killed"
    assert got == _plain_report(default_onnx, images, labels, [3, 5])
    assert np.array_equal(columns["labels"], labels) and columns["logits"].shape[0] == 3000


def test_ray_is_refused_in_logits_mode(tmp_path: Path) -> None:
    np.save(tmp_path / "u.npy", np.zeros((1, 4, 4, 2), dtype=np.float32))
    done = subprocess.run([*PG_CERTIFY, "--logits", str(tmp_path / "u.npy"), "--window", "2", "--ray"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Error: --ray belongs to --model mode" in done.stderr


def test_a_bad_table_on_ray_is_one_error_line_not_a_traceback(default_onnx: Path, tmp_path: Path) -> None:
    """An error raised inside a Ray task (a label out of range in the actors, a cell that
    is no image in a read task) ends pg-certify --ray as it ends the single-process run:
    one Error: line, exit 1, and no traceback on the console."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "label99.npz", images=images, labels=np.full(20, 99))
    pq.write_table(pa.table({"image": [b"not an image"] * 20, "label": np.zeros(20, np.int64)}),
                   tmp_path / "cells.parquet")
    cases = {"label99.npz": "labels must be class indices in [0, 10), got 99",
             "cells.parquet": "an 'image' cell is not a readable image"}
    for name, message in cases.items():
        for extra in ([], ["--ray", "--ray-workers", "1"]):
            done = subprocess.run([*PG_CERTIFY, "--model", str(default_onnx), "--data", str(tmp_path / name),
                                   "--patch-size", "5", *extra], capture_output=True, text=True, timeout=300)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
            assert lines[-1].startswith("Error: ") and message in lines[-1], (name, extra, lines[-1])
