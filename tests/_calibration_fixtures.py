"""Real fixtures for the calibration tests: the bundled model exported, image folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "models" / "samples" / "fashion-mnist-test"



def export_default(path: Path) -> Path:
    """The bundled default checkpoint, exported by the project's exporter to ``path``."""
    pytest.importorskip("torch", reason="exporting a test model needs torch (the [export] extra)")
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import DEFAULT_CHECKPOINT, load_checkpoint

    model, record = load_checkpoint(DEFAULT_CHECKPOINT)
    return save_onnx(export_onnx(model, record), path)


def write_images(folder: Path, count: int, size: int = 28, seed: int = 0) -> list[Path]:
    """``count`` random gray PNGs in ``folder`` (written with OpenCV)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (size, size), dtype=np.uint8))
        paths.append(path)
    return paths
