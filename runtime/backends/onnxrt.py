"""ONNX Runtime backend: runs an exported ``.onnx`` on CPU, CUDA or TensorRT EPs.

The model record comes from the ONNX metadata entry ``patchguard``. The CPU
execution provider is the default; with ``onnxruntime-gpu`` installed, pass
``provider="cuda"`` or ``"tensorrt"`` (or the full ONNX Runtime name). A
requested provider that is missing is an error naming the available ones, and
a session that silently fell back to the CPU is refused too.

The TensorRT execution provider gets the options of onnxruntime's TensorRT EP
documentation (:func:`provider_chain`): the CUDA provider after it (for any
node TensorRT refuses), an engine and timing cache in ``NAME.onnx.trt-cache/``
beside the model (the first session builds for minutes on a Jetson; later ones
load), ``trt_fp16_enable`` / ``trt_int8_enable`` for the ``NAME.fp16.onnx`` /
``NAME.int8.onnx`` graphs pg-export writes (precision is read from the file
name: a renamed fp16 or int8 file runs with fp32 settings, correct but
slower), and one explicit profile for batch 1..:data:`TRT_EP_MAX_BATCH`, so a
change of batch size does not rebuild the engine (larger batches run in
chunks).

Thread safety: :meth:`OnnxRuntimeBackend.infer` may be called from several
threads at once; ``InferenceSession.run`` is thread-safe.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import PatchGuardError, first_line, lazy_import
from ..files import PathText
from ..metadata import ModelRecord, record_from_metadata
from ..verify import verify
from .base import Backend

log = logging.getLogger(__name__)

# Short names users type -> ONNX Runtime's provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
# The largest batch of the TensorRT EP's profile (pg-export's engine default).
TRT_EP_MAX_BATCH = 8
TRT_CACHE_SUFFIX = ".trt-cache"
ProviderChain = list[tuple[str, dict[str, Any]]]


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


def precision_from_name(path: Path) -> str:
    """"fp16" / "int8" for pg-export's ``NAME.fp16.onnx`` / ``NAME.int8.onnx``, else "fp32"."""
    suffixes = [part.lower() for part in path.suffixes]
    for precision in ("fp16", "int8"):
        if f".{precision}" in suffixes[:-1]:
            return precision
    return "fp32"


def trt_cache_dir(path: Path) -> Optional[Path]:
    """``NAME.onnx.trt-cache/`` beside the model, created; None where it cannot be (read-only folder)."""
    folder = path.parent / (path.name + TRT_CACHE_SUFFIX)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        log.warning("no TensorRT engine cache for %s (%s): every session rebuilds the engine",
                    path.name, exc.strerror or exc)
        return None
    return folder


def profile_shapes(input_name: str, chw: Sequence[int], max_batch: int) -> dict[str, str]:
    """The TensorRT EP's explicit profile: batch 1..max_batch, tuned for 1 (one camera frame)."""
    dims = "x".join(str(int(d)) for d in chw)
    return {
        "trt_profile_min_shapes": f"{input_name}:1x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:1x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{int(max_batch)}x{dims}",
    }


def provider_chain(
    provider: str,
    path: Path,
    input_name: str,
    chw: Sequence[int],
    precision: str = "fp32",
    max_batch: int = TRT_EP_MAX_BATCH,
    device_id: int = 0,
) -> ProviderChain:
    """The ``providers`` list handed to ``InferenceSession``: (name, options) pairs, best first."""
    if provider == CPU_EP:
        return [(CPU_EP, {})]
    cuda = (CUDA_EP, {"device_id": device_id})
    if provider == CUDA_EP:
        return [cuda, (CPU_EP, {})]
    if provider != TRT_EP:
        return [(provider, {}), (CPU_EP, {})]
    options: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": precision == "fp16",
        # QDQ graphs: explicit quantization, no calibration table (the EP's docs forbid one).
        "trt_int8_enable": precision == "int8",
        **profile_shapes(input_name, chw, max_batch),
    }
    cache = trt_cache_dir(path)
    if cache is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cache))
    return [(TRT_EP, options), cuda, (CPU_EP, {})]


def load_session(
    path: PathText,
    provider: str,
    threads: Optional[int] = None,
    precision: Optional[str] = None,
) -> Any:
    """An ``InferenceSession`` for ``path`` or a one-line error (missing, corrupt, not ONNX).

    ``precision`` (default: from the file name) sets the TensorRT EP's fp16 / int8 options.
    """
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise PatchGuardError(f"model {path} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's warnings go to stderr unasked otherwise
    if threads:
        options.intra_op_num_threads = int(threads)
    chain: ProviderChain = [(CPU_EP, {})]
    try:
        if provider == TRT_EP:
            # The TensorRT EP's profile needs the input's name and shape before the session exists.
            probe = ort.InferenceSession(str(path), sess_options=options, providers=[CPU_EP])
            first = probe.get_inputs()[0]
            chw = [d if isinstance(d, int) else 1 for d in first.shape[1:]]
            del probe
            chain = provider_chain(provider, path, first.name, chw, precision or precision_from_name(path))
        elif provider != CPU_EP:
            chain = provider_chain(provider, path, "", ())
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=[name for name, _ in chain],
                                    provider_options=[opts for _, opts in chain])
    except Exception as exc:  # onnxruntime raises its own classes for corrupt files
        raise PatchGuardError(f"cannot load {path} as an ONNX model: {first_line(exc)}") from None


def session_record(session: Any, path: Path) -> ModelRecord:
    """The :class:`ModelRecord` stored in the model's ``patchguard`` metadata entry."""
    return record_from_metadata(session.get_modelmeta().custom_metadata_map, str(path))


class OnnxRuntimeBackend(Backend):
    """An ONNX model in onnxruntime; ``infer`` is thread-safe."""

    name = "onnxruntime"

    def __init__(
        self,
        path: PathText,
        provider: Optional[str] = None,
        threads: Optional[int] = None,
        record: Optional[ModelRecord] = None,
        precision: Optional[str] = None,
        allow_unverified: bool = False,
    ) -> None:
        path = Path(path)
        wanted = resolve_provider(provider)
        session = load_session(path, wanted, threads, precision)
        used = session.get_providers()[0]
        if used != wanted:
            # onnxruntime-gpu falls back to the CPU without a word; we do not.
            raise PatchGuardError(
                f"onnxruntime could not start {wanted} for {path.name} and fell back to {used}"
            )
        # The TensorRT EP's profile ends at TRT_EP_MAX_BATCH: larger batches run in chunks.
        super().__init__(path, record or session_record(session, path),
                         max_batch=TRT_EP_MAX_BATCH if used == TRT_EP else None)
        self.provider = used
        self._session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise PatchGuardError(
                f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; expected one image "
                "batch in and one local-logit map out"
            )
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.check_input_shape(inputs[0].shape)
        self.check_output_shape(outputs[0].shape)
        # The record's r and s are believed only as far as the graph proves them.
        self.attest(lambda: verify(path, self.record), allow_unverified)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]

    def close(self) -> None:
        self._session = None
        super().close()
