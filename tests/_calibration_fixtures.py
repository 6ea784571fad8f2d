"""Helpers for the calibration tests: the bundled sample images, random image folders.

The exported bundled model is conftest.py's ``default_onnx`` fixture."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "fashion-mnist-test"


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
