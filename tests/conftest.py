"""Shared test set-up: opt-in markers and the session-wide real fixtures.

Markers: tests marked ``gpu`` / ``tensorrt`` skip, with the reason, where the
GPU or the package is missing; tests marked ``fashion_mnist`` skip without the
Debian dataset, except where ``PATCHGUARD_REQUIRE_DATA=1`` (CI): there they run
and fail, so a missing dataset can never pass unnoticed. Tests marked
``acceptance`` are the hour-scale acceptance runs (300 certified images attacked
in pixel space at every position); their quick twins run in every suite, and
they run themselves with ``PATCHGUARD_ACCEPTANCE=1`` (``make acceptance``).

Fixtures that several areas use live here, session-scoped, so each real export
happens once per test run (importing a fixture into a test module instead would
run it once per module). Plain helper functions live in ``tests/_*_fixtures.py``
(``tests/`` is on ``sys.path`` through ``pythonpath`` in pyproject.toml).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import export_small
from _pipeline_fixtures import export_default_model, fashion_frames, write_video


def _cuda_available() -> bool:
    # cuda-python first: a Jetson runs the GPU tests without torch.
    from patchguard.runtime.backends.cuda import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:
        return True
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and _cuda_available()


def fashion_mnist_or_required() -> bool:
    """The dataset is here, or CI requires it (then its tests run and fail without it)."""
    from patchguard.runtime.datasets import fashion_mnist_available

    return fashion_mnist_available() or os.environ.get("PATCHGUARD_REQUIRE_DATA") == "1"


NO_FASHION_MNIST = ("needs the Fashion-MNIST idx files "
                    "(apt-get install dataset-fashion-mnist, or PATCHGUARD_FASHION_MNIST=DIR)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {
        "gpu": (_cuda_available, "needs a CUDA GPU (neither cuda-python nor torch sees one)"),
        "tensorrt": (_tensorrt_available, "needs the tensorrt package and a CUDA GPU"),
        "fashion_mnist": (fashion_mnist_or_required, NO_FASHION_MNIST),
        "acceptance": (lambda: os.environ.get("PATCHGUARD_ACCEPTANCE") == "1",
                       "hour-scale acceptance run: make acceptance (PATCHGUARD_ACCEPTANCE=1)"),
    }
    verdicts: dict[str, bool] = {}
    for item in items:
        for marker, (check, reason) in checks.items():
            if item.get_closest_marker(marker) is not None:
                if marker not in verdicts:
                    verdicts[marker] = check()
                if not verdicts[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default checkpoint exported by our exporter (read-only: copy it to change it).

    ``$PATCHGUARD_TEST_ONNX`` names another exported model to test instead.
    """
    given = os.environ.get("PATCHGUARD_TEST_ONNX")
    if given:
        return Path(given)
    return export_default_model(tmp_path_factory.mktemp("model") / "fashion.onnx")


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised small BagNet exported by our exporter (read-only)."""
    pytest.importorskip("torch", reason="exporting a test model needs torch (the [export] extra)")
    return export_small(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="session")
def fashion_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """120 Fashion-MNIST test images upscaled to 112x112, as a video, with their labels."""
    if not fashion_mnist_or_required():
        pytest.skip(NO_FASHION_MNIST)
    frames, labels = fashion_frames(120, (112, 112))
    return write_video(tmp_path_factory.mktemp("video") / "fashion.avi", frames), labels
