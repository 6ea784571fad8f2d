"""ONNX Runtime backend: runs an exported ``.onnx`` on CPU, CUDA or TensorRT EPs.

The model record comes from the ONNX metadata entry ``patchguard``. The CPU
execution provider is the default; with ``onnxruntime-gpu`` installed, pass
``provider="cuda"`` or ``"tensorrt"`` (or the full ONNX Runtime name). A
requested provider that is missing is an error naming the available ones, and
a session that silently fell back to the CPU is refused too.

Thread safety: :meth:`OnnxRuntimeBackend.infer` may be called from several
threads at once; ``InferenceSession.run`` is thread-safe.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import PatchGuardError, lazy_import
from ..metadata import METADATA_KEY, ModelRecord
from .base import Backend

# Short names users type -> ONNX Runtime's provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def _ort() -> Any:
    return lazy_import("onnxruntime", "cpu")


def resolve_provider(provider: Optional[str]) -> str:
    """``None`` -> CPU; an alias or full name -> the full name, if installed."""
    ort = _ort()
    wanted = PROVIDER_ALIASES.get((provider or "cpu").lower(), provider or "CPUExecutionProvider")
    available = list(ort.get_available_providers())
    if wanted not in available:
        raise PatchGuardError(
            f"requested provider was {provider}, but available providers are "
            f"{', '.join(available)} (GPU providers need pip install 'patchguard-edge[gpu]')"
        )
    return wanted


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_session(path: os.PathLike, provider: str, threads: Optional[int] = None) -> Any:
    """An ``InferenceSession`` for ``path`` or a one-line error (missing, corrupt, not ONNX)."""
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise PatchGuardError(f"model {path} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's warnings go to stderr unasked otherwise
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own classes for corrupt files
        raise PatchGuardError(f"cannot load {path} as an ONNX model: {_first_line(exc)}") from None


def session_record(session: Any, path: Path) -> ModelRecord:
    """The :class:`ModelRecord` stored in the model's ``patchguard`` metadata entry."""
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise PatchGuardError(
            f"{path} has no '{METADATA_KEY}' metadata; export it with pg-export"
        )
    return ModelRecord.from_json(meta[METADATA_KEY])


class OnnxRuntimeBackend(Backend):
    """An ONNX model in onnxruntime; ``infer`` is thread-safe."""

    name = "onnxruntime"

    def __init__(
        self,
        path: os.PathLike,
        provider: Optional[str] = None,
        threads: Optional[int] = None,
        record: Optional[ModelRecord] = None,
    ) -> None:
        path = Path(path)
        wanted = resolve_provider(provider)
        session = load_session(path, wanted, threads)
        used = session.get_providers()[0]
        if used != wanted:
            # onnxruntime-gpu falls back to the CPU without a word; we do not.
            raise PatchGuardError(
                f"onnxruntime could not start {wanted} for {path.name} and fell back to {used}"
            )
        super().__init__(path, record or session_record(session, path))
        self.provider = used
        self._session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise PatchGuardError(f"{path.name} has {len(inputs)} inputs; expected one image batch")
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.check_output_shape(outputs[0].shape)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]

    def close(self) -> None:
        self._session = None
        super().close()
