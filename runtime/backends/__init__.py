"""Inference backends behind one face: ``open_backend(path) -> Backend``.

The file suffix picks the backend: ``.onnx`` runs in onnxruntime (record from
the ONNX metadata entry ``patchguard``), ``.plan`` / ``.engine`` in TensorRT
(record from ``NAME.plan.json``). Both import their heavy dependency only when
a model is opened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import PatchGuardError
from .base import Backend

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")


def open_backend(path: os.PathLike, provider: Optional[str] = None,
                 threads: Optional[int] = None) -> Backend:
    """Open ``path`` with the backend its suffix names.

    ``provider`` picks the onnxruntime execution provider ("cpu", "cuda",
    "tensorrt" or a full name; default CPU); for a ``.plan`` only None or
    "tensorrt" make sense. ``threads``: onnxruntime's intra-op threads
    (default: its own choice, one per core); engines ignore it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, provider=provider, threads=threads)
    if suffix in ENGINE_SUFFIXES:
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(path, provider=provider)
    raise PatchGuardError(
        f"cannot tell the backend of {path.name}: expected one of "
        f"{', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)}"
    )


__all__ = ["Backend", "open_backend", "ONNX_SUFFIXES", "ENGINE_SUFFIXES"]
