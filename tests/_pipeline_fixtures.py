"""Real fixtures for the runtime pipeline tests: an exported model, videos, image folders.

Import the fixtures into a test module (``from _pipeline_fixtures import ...``);
kept out of conftest.py so several areas can add fixtures without collisions.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.datasets import fashion_mnist_available, load_fashion_mnist

# CI sets PATCHGUARD_REQUIRE_DATA=1: a missing dataset then fails instead of skipping.
_SKIP_WITHOUT_DATA = not fashion_mnist_available() and os.environ.get("PATCHGUARD_REQUIRE_DATA") != "1"
_NO_DATA = "Fashion-MNIST idx files not found (apt-get install dataset-fashion-mnist)"


def export_default_model(path: Path) -> Path:
    """The bundled default checkpoint exported by the project's exporter to ``path``."""
    pytest.importorskip("torch", reason="exporting a test model needs torch (the [export] extra)")
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import DEFAULT_CHECKPOINT, load_checkpoint

    model, record = load_checkpoint(DEFAULT_CHECKPOINT)
    return save_onnx(export_onnx(model, record), path)


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default, exported; ``$PATCHGUARD_TEST_ONNX`` names another exported model."""
    given = os.environ.get("PATCHGUARD_TEST_ONNX")
    if given:
        return Path(given)
    return export_default_model(tmp_path_factory.mktemp("model") / "fashion.onnx")


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


@pytest.fixture(scope="session")
def fashion_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """120 Fashion-MNIST test images upscaled to 112x112, as a video, with their labels."""
    if _SKIP_WITHOUT_DATA:
        pytest.skip(_NO_DATA)
    frames, labels = fashion_frames(120, (112, 112))
    return write_video(tmp_path_factory.mktemp("video") / "fashion.avi", frames), labels
