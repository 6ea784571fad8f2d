"""Opt-in markers: tests marked ``gpu`` / ``tensorrt`` skip, with the reason,
where the GPU or the package is missing; tests marked ``fashion_mnist`` skip
without the Debian dataset, except where ``PATCHGUARD_REQUIRE_DATA=1`` (CI):
there they run and fail, so a missing dataset can never pass unnoticed. Nothing else lives here on purpose:
fixtures belong in each area's own test file or ``tests/_<area>_fixtures.py``."""
from __future__ import annotations

import importlib.util
import os

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and _cuda_available()


def _fashion_mnist_available() -> bool:
    from patchguard.runtime.datasets import fashion_mnist_available

    return fashion_mnist_available() or os.environ.get("PATCHGUARD_REQUIRE_DATA") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {
        "gpu": (_cuda_available, "needs a CUDA GPU (torch.cuda.is_available() is False)"),
        "tensorrt": (_tensorrt_available, "needs the tensorrt package and a CUDA GPU"),
        "fashion_mnist": (_fashion_mnist_available, "needs the Fashion-MNIST idx files "
                          "(apt-get install dataset-fashion-mnist, or PATCHGUARD_FASHION_MNIST=DIR)"),
    }
    verdicts: dict[str, bool] = {}
    for item in items:
        for marker, (check, reason) in checks.items():
            if item.get_closest_marker(marker) is not None:
                if marker not in verdicts:
                    verdicts[marker] = check()
                if not verdicts[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))
