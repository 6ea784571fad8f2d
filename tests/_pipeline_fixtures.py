"""Helpers for the runtime pipeline tests: the bundled model exported, Fashion-MNIST frames, videos.

The session fixtures built from them (``default_onnx``, ``fashion_video``) live in conftest.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.datasets import load_fashion_mnist


def export_default_model(path: Path) -> Path:
    """The bundled default checkpoint exported by the project's exporter to ``path``."""
    pytest.importorskip("torch", reason="exporting a test model needs torch (the [export] extra)")
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import DEFAULT_WEIGHTS

    model, record = DEFAULT_WEIGHTS.load()
    return save_onnx(export_onnx(model, record), path)


def fashion_frames(count: int, size: tuple[int, int], start: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` Fashion-MNIST test images as BGR frames of ``size`` (h, w), with labels."""
    import cv2

    images, labels = load_fashion_mnist("test")
    frames = []
    for image in images[start : start + count]:
        big = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        frames.append(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    return frames, labels[start : start + count]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """An MJPG .avi of ``frames`` (BGR, one size)."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path
