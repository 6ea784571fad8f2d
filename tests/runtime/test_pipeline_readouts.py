"""Pipeline and pg-run with the readouts of issue 14 on the real bundled model:
double masking, alerts, top-k, margin, confidence, abstention, --on-alert exit."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _pipeline_fixtures import fashion_frames

from patchguard.runtime import PatchGuardError, certify, predict
from patchguard.runtime.detection import detect
from patchguard.runtime.pipeline import Pipeline
from patchguard.runtime.preprocess import normalize, to_model_image
from patchguard.runtime.topk import certification_margin

cv2 = pytest.importorskip("cv2")


def _maps(pipeline: Pipeline, frames: list[np.ndarray]) -> np.ndarray:
    batch = normalize(np.stack([to_model_image(f, pipeline.record) for f in frames]), pipeline.record)
    return pipeline.backend.infer(batch)


@pytest.mark.fashion_mnist
def test_frame_readouts_equal_the_library_functions(default_onnx: Path) -> None:
    frames, _ = fashion_frames(12, (96, 128))
    with Pipeline.from_engine(default_onnx, tau=0.6, top_k=3) as pipeline:
        results = pipeline.run_batch(frames)
        u = _maps(pipeline, frames)
        window = pipeline.threat((96, 128)).window
    assert [r.label for r in results] == predict(u, window).tolist()
    assert [r.alert for r in results] == detect(u, window, tau=0.6).alerts.tolist()
    assert [r.top_k_certified for r in results] == certify(u, window, top_k=3).tolist()
    assert np.allclose([r.margin for r in results], certification_margin(u, window))
    for r in results:
        assert r.top_k[0][0] == r.label and len(r.top_k) == 3 and 0 < r.confidence <= 1
        assert r.certified == (r.margin > 0) and not r.abstained
        row = r.to_dict()
        assert row["top_k"]["labels"][0] == r.label and row["alert"] == r.alert


@pytest.mark.fashion_mnist
def test_double_masking_pipeline_equals_the_library(default_onnx: Path) -> None:
    frames, _ = fashion_frames(8, (28, 28))
    with Pipeline.from_engine(default_onnx, defense="double", masks_per_axis=4) as pipeline:
        results = pipeline.run_batch(frames)
        u = _maps(pipeline, frames)
        window = pipeline.threat((28, 28)).window
    assert [r.label for r in results] == predict(u, window, defense="double", masks_per_axis=4).tolist()
    expected = certify(u, window, defense="double", masks_per_axis=4)
    assert [r.certified for r in results] == expected.tolist()
    assert [r.certified_patch_px for r in results] == [r.patch_px if ok else 0
                                                       for r, ok in zip(results, expected, strict=True)]
    assert all(r.to_dict()["defense"] == "double" for r in results)


def test_bad_readout_options_are_one_error(default_onnx: Path) -> None:
    for kwargs, fragment in [({"defense": "vote"}, "defense"), ({"tau": 1.0}, "tau"),
                             ({"top_k": 0}, "top_k"), ({"abstain_below": 2.0}, "abstain-below"),
                             ({"abstain_spread": -1.0}, "abstain-spread"),
                             ({"masks_per_axis": 3}, "masks per axis"),
                             ({"defense": "double", "thres": 0.1}, "detection threshold")]:
        with pytest.raises(PatchGuardError, match=fragment):
            Pipeline.from_engine(default_onnx, **kwargs)


def _blank_frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"black": np.zeros((480, 640, 3), np.uint8), "grey": np.full((480, 640, 3), 128, np.uint8),
            "noise": rng.integers(0, 256, (480, 640, 3)).astype(np.uint8)}


def test_blank_frames_are_confident_without_abstention_and_abstain_with_it(default_onnx: Path) -> None:
    blanks = list(_blank_frames().values())
    with Pipeline.from_engine(default_onnx) as plain:
        before = plain.run_batch(blanks)
    # The certificate is about patches: a black frame is labelled and certified.
    assert all(r.label >= 0 and r.certified and r.confidence > 0.8 for r in before)
    with Pipeline.from_engine(default_onnx, abstain_below=0.4, abstain_spread=4.0) as guarded:
        after = guarded.run_batch(blanks)
    for r in after:
        assert r.abstained and r.label == -1 and not r.certified and r.certified_patch_px == 0
        assert r.masked_box is None and r.spread < 4.0


def pg_run(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from patchguard.runtime.cli.run import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.fashion_mnist
def test_pg_run_on_alert_exit_stops_at_the_first_alert(default_onnx: Path, tmp_path: Path) -> None:
    frames, _ = fashion_frames(40, (28, 28))
    with Pipeline.from_engine(default_onnx, tau=0.3) as pipeline:
        alerts = [r.alert for r in pipeline.run_batch(frames)]
    assert any(alerts) and not all(alerts)
    first = alerts.index(True)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    out = tmp_path / "rows.jsonl"
    done = pg_run("--engine", str(default_onnx), "--source", str(folder), "--tau", "0.3",
                  "--on-alert", "exit", "--jsonl", str(out))
    assert done.returncode == 5, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert len(rows) == first + 1 and rows[-1]["alert"] and not any(r["alert"] for r in rows[:-1])
    assert "alert at frame" in done.stderr
    marked = pg_run("--engine", str(default_onnx), "--source", str(folder), "--tau", "0.3",
                    "--jsonl", str(out))
    assert marked.returncode == 0, marked.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert [r["alert"] for r in rows] == alerts
    assert f"alerts {sum(alerts)}" in marked.stderr


def test_pg_run_abstains_on_blank_frames(default_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "blank"
    folder.mkdir()
    for name, frame in _blank_frames().items():
        cv2.imwrite(str(folder / f"{name}.png"), frame)
    out = tmp_path / "rows.jsonl"
    done = pg_run("--engine", str(default_onnx), "--source", str(folder), "--abstain-below", "0.4",
                  "--abstain-spread", "4", "--jsonl", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert len(rows) == 3
    assert all(r["abstained"] and r["label"] == -1 and not r["certified"] for r in rows)
