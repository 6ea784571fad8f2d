"""BagNet models, their records, checkpoints and the PyTorch reference defense.

Names load lazily (PEP 562) so that ``pg-train --help`` and ``pg-attack --help``
work on a machine without torch; using any of them needs the ``[export]`` extra.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BagNet": "bagnet", "bagnet9": "bagnet", "bagnet17": "bagnet", "bagnet33": "bagnet",
    "SmallBagNet": "small", "CompactCNN": "cnn",
    "ARCHITECTURES": "registry", "record_for": "registry", "small_record": "registry", "build_model": "registry",
    "WEIGHTS": "registry", "DEFAULT_WEIGHTS": "registry",
    "load_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
}
__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (a list, built from the lazy table)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ..runtime.errors import lazy_import

    lazy_import("torch", "export")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
