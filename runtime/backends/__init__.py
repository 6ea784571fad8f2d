"""Inference backends behind one face: ``open_backend(path) -> Backend``.

The file suffix picks the backend: ``.onnx`` runs in onnxruntime (record from
the ONNX metadata entry ``patchguard``), ``.plan`` / ``.engine`` in TensorRT
(record from ``NAME.plan.json``). Both import their heavy dependency only when
a model is opened.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import PatchGuardError
from ..files import PathText
from .base import Backend

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")


def open_backend(path: PathText, provider: Optional[str] = None,
                 threads: Optional[int] = None, allow_unverified: bool = False,
                 onnx: Optional[PathText] = None) -> Backend:
    """Open ``path`` with the backend its suffix names.

    ``provider`` picks the onnxruntime execution provider ("cpu", "cuda",
    "tensorrt" or a full name; default CPU); for a ``.plan`` only None or
    "tensorrt" make sense. ``threads``: onnxruntime's intra-op threads
    (default: its own choice, one per core); engines ignore it.

    A local-logit model loads only when its locality is proved (an ONNX
    file's graph, :mod:`..verify`; an engine's sidecar, written from a
    verified ONNX); ``allow_unverified`` keeps one that is not, for labels
    only (:attr:`Backend.unverified` says why). ``onnx``: for an engine, the
    ONNX file it was built from, proved again and checked against the
    sidecar's SHA-256.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    _finish_interrupted_export(path.parent)
    if onnx is not None and suffix not in ENGINE_SUFFIXES:
        raise PatchGuardError(
            f"--onnx names the ONNX a TensorRT engine was built from; {path.name} is not an engine")
    if suffix in ONNX_SUFFIXES:
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, provider=provider, threads=threads,
                                  allow_unverified=allow_unverified)
    if suffix in ENGINE_SUFFIXES:
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(path, provider=provider, onnx=onnx,
                               allow_unverified=allow_unverified)
    raise PatchGuardError(
        f"cannot tell the backend of {path.name}: expected one of "
        f"{', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)}"
    )


def _finish_interrupted_export(folder: Path) -> None:
    """A pg-export killed in its commit leaves a journal; finish it before loading, so
    the model read is the whole new set, never half of it (:mod:`..artifacts`)."""
    if not any(folder.glob(".*.commit.json")):
        return
    import logging

    from ..artifacts import recover

    for line in recover(folder):
        logging.getLogger(__name__).warning("%s", line)


__all__ = ["Backend", "open_backend", "ONNX_SUFFIXES", "ENGINE_SUFFIXES"]
