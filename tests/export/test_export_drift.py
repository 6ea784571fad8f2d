"""A reduced-precision model that decides differently fails the export (unless
--allow-parity-drift); the parity columns say what they measure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import assert_one_line_error, run_cli, visible_files

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "fashion-mnist-test"


@pytest.fixture(scope="module")
def dark_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Off-distribution calibration images: nearly black squares, nothing like a garment."""
    folder = tmp_path_factory.mktemp("dark")
    for i in range(8):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((28, 28), 3 * i, np.uint8))
    return folder


def _args(out: Path, calib: Path) -> list[str]:
    return ["--out", str(out), "--int8", "--calib-data", str(calib), "--calib-size", "8",
            "--parity-data", str(SAMPLE), "--parity-n", "40", "--no-engine"]


def test_badly_calibrated_int8_is_refused_and_nothing_is_written(tmp_path: Path, dark_images: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(_args(out, dark_images))
    line = assert_one_line_error(result, "int8.onnx", "robust-masking predictions", "export refused",
                                 "--allow-parity-drift")
    assert "points lower, plus one input" in line
    # No model, no report; only the calibration cache (keyed by the model bytes) may stay.
    assert [f for f in visible_files(out) if not f.endswith(".calib.json")] == []


def test_allow_parity_drift_writes_it_with_a_warning(tmp_path: Path, dark_images: Path) -> None:
    out = tmp_path / "out"
    result = run_cli([*_args(out, dark_images), "--allow-parity-drift"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "written because of --allow-parity-drift" in result.output
    assert "own-pred certified ref/art" in result.output and "not certified accuracy" in result.output
    report = json.loads((out / "fashion_mnist_bagnet.parity.json").read_text())
    int8 = next(r for r in report["rows"] if r["precision"] == "int8")
    assert {"own_prediction_certified_reference", "own_prediction_certified_artifact"} <= set(int8)
    assert int8["prediction_agreement"] < 0.98
    assert (out / "fashion_mnist_bagnet.int8.onnx").is_file()


def test_well_calibrated_int8_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(_args(out, SAMPLE))
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output
    assert (out / "fashion_mnist_bagnet.int8.onnx").is_file()
