"""TensorRT backend: runs a ``NAME.plan`` engine built by pg-export on this machine.

An engine only runs on the TensorRT version and GPU family that built it, so
the facts live beside it in ``NAME.plan.json`` (the model record plus an
``engine`` entry: TensorRT version, GPU name, compute capability, SM count,
precision, TF32, batch range, tensor names) and a mismatch is refused with one
line before the engine is deserialised. Uses only the tensor-name API that TensorRT 10 and 11
share (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and CUDA
buffers from cuda-python (through :mod:`.cuda`).

Thread safety: :meth:`TensorRTBackend.infer` may be called from several
threads; one execution context and one set of device buffers are shared, so
calls, and ``close``, are serialised by the base class's lock (open one
backend per thread to run them in parallel).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import PatchGuardError, lazy_import
from ..files import PathText
from ..metadata import EngineInfo, read_sidecar
from ..verify import engine_proof
from .base import Backend
from .cuda import DeviceFacts, cuda_call, cuda_runtime, cuda_unavailable_reason, device_facts, native_handle

# Every TensorRT attribute this module touches; tests check them against the
# installed tensorrt wherever it imports (the builder's list is in export/engine.py).
TRT_RUNTIME_ATTRIBUTES = (
    "__version__",
    "Logger", "Logger.WARNING",
    "Runtime", "Runtime.deserialize_cuda_engine",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_shape",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
    "TensorIOMode.INPUT", "TensorIOMode.OUTPUT",
    "DataType.FLOAT", "DataType.HALF",
)


def tensorrt_module() -> Any:
    return lazy_import("tensorrt", "trt")


def machine_mismatches(info: EngineInfo, tensorrt_version: str, device: DeviceFacts) -> list[str]:
    """What differs between the machine that built an engine and this one (empty: it may run here)."""
    wanted = {"TensorRT": info.tensorrt_version, "GPU": info.gpu_name,
              "compute capability": info.compute_capability, "SMs": str(info.sm_count)}
    found = {"TensorRT": str(tensorrt_version), "GPU": device.name,
             "compute capability": device.compute_capability, "SMs": str(device.sm_count)}
    if int(info.sm_count) <= 0:
        del wanted["SMs"], found["SMs"]  # a sidecar from before SM counts were recorded
    return [f"{k} {wanted[k]} (this machine: {found[k]})" for k in wanted if found[k] != wanted[k]]


def check_machine(info: EngineInfo, plan: Path) -> None:
    """Refuse an engine built by another TensorRT version or another GPU (name, capability, SMs)."""
    trt = tensorrt_module()
    reason = cuda_unavailable_reason()
    if reason:
        raise PatchGuardError(f"{plan.name} is a TensorRT engine and no CUDA GPU is usable here: {reason}")
    wrong = machine_mismatches(info, trt.__version__, device_facts())
    if wrong:
        raise PatchGuardError(
            f"{plan.name} was built for {', '.join(wrong)}; rebuild it here with "
            f"pg-export --onnx MODEL.onnx"
        )


def _np_dtype(trt: Any, dtype: Any) -> np.dtype:
    table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
    if dtype not in table:
        raise PatchGuardError(f"engine tensor type {dtype} is not supported (float32/float16 I/O only)")
    return np.dtype(table[dtype])


def engine_io(engine: Any, trt: Any, plan: Path, info: EngineInfo) -> tuple[str, str]:
    """(input, output) tensor names of a deserialised engine, checked against its sidecar.

    A BagNet engine has one image input and one local-logit output; an engine
    with more (a detection head, an auxiliary output) would have only its first
    output bound and read, so it is refused, as is one whose names are not the
    ones the sidecar recorded at build time (the .plan was swapped).
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise PatchGuardError(
            f"{plan.name} has inputs {inputs} and outputs {outputs}; a PatchGuard engine has one image "
            "input and one local-logit output"
        )
    recorded = (info.input_name, info.output_name)
    if any(want and want != got for want, got in zip(recorded, (inputs[0], outputs[0]))):
        raise PatchGuardError(
            f"{plan.name} has tensors {inputs[0]!r} -> {outputs[0]!r} but its sidecar recorded "
            f"{recorded[0]!r} -> {recorded[1]!r}; the engine and its .json do not belong together"
        )
    return inputs[0], outputs[0]


class TensorRTBackend(Backend):
    """A TensorRT engine with its sidecar; ``infer`` and ``close`` are serialised by a lock."""

    name = "tensorrt"
    serial = True  # one execution context and one set of device buffers

    def __init__(self, path: PathText, provider: Optional[str] = None,
                 onnx: Optional[PathText] = None, allow_unverified: bool = False) -> None:
        path = Path(path)
        if not path.is_file():
            raise PatchGuardError(f"engine {path} does not exist")
        if provider not in (None, "tensorrt", "trt"):
            raise PatchGuardError(f"a .plan runs on TensorRT only; provider {provider!r} does not apply")
        record, info = read_sidecar(path)
        super().__init__(path, record, max_batch=int(info.max_batch))
        self.info = info
        # Trusted by provenance, before anything touches the GPU: the sidecar's digest and
        # proved geometry (and, given the ONNX it was built from, a fresh proof of it).
        self.attest(lambda: engine_proof(info.onnx_sha256, info.proved_geometry, record, onnx),
                    allow_unverified)
        self._buffers: list[int] = []
        self._stream: Any = None
        self._context: Any = None
        self._engine: Any = None
        trt = tensorrt_module()
        check_machine(info, path)
        cudart = cuda_runtime()
        self._cudart = cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise PatchGuardError(f"TensorRT could not deserialise {path.name} (corrupt or foreign engine)")
        self._engine = engine
        self._input, self._output = engine_io(engine, trt, path, info)
        self.check_output_shape([int(d) for d in engine.get_tensor_shape(self._output)])
        self._in_dtype = _np_dtype(trt, engine.get_tensor_dtype(self._input))
        self._out_dtype = _np_dtype(trt, engine.get_tensor_dtype(self._output))
        self._context = engine.create_execution_context()
        if self._context is None:
            raise PatchGuardError(f"TensorRT could not create an execution context for {path.name}")
        per_image_in = int(np.prod((record.model_channels, *record.input_size))) * self._in_dtype.itemsize
        self._out_tail = record.output_shape
        per_image_out = int(np.prod(self._out_tail)) * self._out_dtype.itemsize
        try:
            self._stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._d_in = self._malloc(per_image_in * int(info.max_batch))
            self._d_out = self._malloc(per_image_out * int(info.max_batch))
        except PatchGuardError:
            self.close()
            raise
        self.provider = f"TensorRT {trt.__version__} ({info.precision}, {info.gpu_name})"

    def _malloc(self, nbytes: int) -> int:
        ptr = cuda_call(self._cudart.cudaMalloc(nbytes), "cudaMalloc")
        self._buffers.append(ptr)
        return int(ptr)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # Base.infer holds self._lock around this call (serial = True).
        cudart = self._cudart
        host_in = np.ascontiguousarray(batch, dtype=self._in_dtype)
        host_out = np.empty((batch.shape[0], *self._out_tail), dtype=self._out_dtype)
        ctx = self._context
        if not ctx.set_input_shape(self._input, tuple(batch.shape)):
            raise PatchGuardError(f"{self.path.name} rejected input shape {tuple(batch.shape)}")
        ctx.set_tensor_address(self._input, self._d_in)
        ctx.set_tensor_address(self._output, self._d_out)
        cuda_call(cudart.cudaMemcpyAsync(
            self._d_in, host_in.ctypes.data, host_in.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream), "copy to GPU")
        if not ctx.execute_async_v3(native_handle(self._stream)):
            raise PatchGuardError(f"TensorRT failed to run {self.path.name}")
        cuda_call(cudart.cudaMemcpyAsync(
            host_out.ctypes.data, self._d_out, host_out.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream), "copy from GPU")
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host_out

    def _release(self) -> None:
        # Runs under the lock (Backend.close): no kernel is using these buffers.
        # Context before engine before runtime: TensorRT's documented teardown order.
        self._context = None
        self._engine = None
        for ptr in self._buffers:
            self._cudart.cudaFree(ptr)
        self._buffers = []
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
