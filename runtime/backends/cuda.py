"""CUDA through cuda-python, for the TensorRT backend and the engine builder: errors that say why.

cuda-python's runtime module is ``cuda.bindings.runtime`` (cuda-python 12.6.1
and newer; 13.x has only this path) or ``cuda.cudart`` (older 12.x). Its calls
return ``(cudaError_t, *values)``; :func:`cuda_call` turns an error into one
line with CUDA's error name and text and the likely cause and fix: a JetPack 6
machine (CUDA 12 driver) with cuda-python 13 gets ``cudaErrorInsufficientDriver``
and the cuda-python to install, never a bare "no GPU". cuda-bindings 12.6-12.8
raise instead when libcuda.so.1 cannot be loaded; that is named too.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import MissingDependencyError, PatchGuardError

# Every cuda-python runtime attribute this package uses; tests check them against the installed
# cuda-python wherever it imports.
CUDA_ATTRIBUTES = (
    "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaDeviceProp.multiProcessorCount",
    "cudaGetErrorString", "cudaGetErrorName",
    "cudaDriverGetVersion", "cudaRuntimeGetVersion", "cudaError_t.cudaErrorInsufficientDriver",
    "cudaMalloc", "cudaFree", "cudaMemcpyAsync", "cudaMemcpyKind.cudaMemcpyHostToDevice",
    "cudaMemcpyKind.cudaMemcpyDeviceToHost", "cudaStreamCreate", "cudaStreamSynchronize",
    "cudaStreamDestroy",
)

def cuda_runtime() -> Any:
    """cuda-python's runtime API module (new and old import paths)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(
        "cuda-python is not installed; install it with pip install 'patchguard-edge[cuda]' "
        "(cuda-python 12.x for CUDA 12 drivers such as JetPack 6's)"
    )


# Likely causes of the CUDA errors a first deployment meets, by cudaError_t name.
CUDA_ERROR_CAUSES = {
    "cudaErrorNoDevice": "no GPU is visible to this process: check nvidia-smi (a Jetson: the user must be "
                         "in the video and render groups) and CUDA_VISIBLE_DEVICES",
    "cudaErrorSystemDriverMismatch": "the kernel driver and libcuda differ in version: reboot after a driver "
                                     "update, or reinstall the driver",
    "cudaErrorCompatNotSupportedOnDevice": "a cuda-compat libcuda is on the library path but this GPU cannot use "
                                           "it: take it out of LD_LIBRARY_PATH",
    "cudaErrorStubLibrary": "the CUDA toolkit's stub libcuda.so was loaded instead of the driver's: take the "
                            "stubs folder out of LD_LIBRARY_PATH",
    "cudaErrorDevicesUnavailable": "the GPU is busy in exclusive-process mode (nvidia-smi -c shows the mode)",
    "cudaErrorMemoryAllocation": "out of GPU memory: lower --max-batch or free the GPU (a Jetson's GPU shares "
                                 "system memory)",
}


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (12060) as "12.6"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def driver_fix(driver: int, runtime: int) -> str:
    """What to do about cudaErrorInsufficientDriver, from both CUDA versions (ints, 0 = none)."""
    if driver <= 0:
        return "no NVIDIA driver is loaded on this machine (JetPack and the NVIDIA driver package ship it)"
    major, minor = driver // 1000, (driver % 1000) // 10
    return (
        f"cuda-python here is built for CUDA {cuda_version_text(runtime)} but the driver supports CUDA "
        f"{cuda_version_text(driver)}: install the cuda-python of the driver's CUDA, "
        f"pip install 'cuda-python>={major},<{major}.{minor + 1}'"
    )


def _cuda_versions(cudart: Any) -> tuple[int, int]:
    """(driver, runtime) CUDA versions as ints; 0 where unknown. Neither call needs a GPU."""
    out = []
    for call in ("cudaDriverGetVersion", "cudaRuntimeGetVersion"):
        try:
            err, value = getattr(cudart, call)()
            out.append(int(value) if int(err) == 0 else 0)
        except Exception:  # an old binding without the call: report "unknown"
            out.append(0)
    return out[0], out[1]


def cuda_error_text(cudart: Any, err: Any, what: str) -> str:
    """One line: the call, CUDA's error name and text, and the likely cause and fix."""
    def decoded(call: str) -> str:
        try:
            value = getattr(cudart, call)(err)[1]
        except Exception:  # never let the error path raise a second error
            return ""
        return value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)

    name = decoded("cudaGetErrorName") or getattr(err, "name", "") or f"error {int(err)}"
    text = decoded("cudaGetErrorString")
    message = f"CUDA {what} failed: {name}" + (f" ({text})" if text and text != name else "")
    if name == "cudaErrorInsufficientDriver":
        cause = driver_fix(*_cuda_versions(cudart))
    else:
        cause = CUDA_ERROR_CAUSES.get(name, "")
    return f"{message}; {cause}" if cause else message


def cuda_call(result: Any, what: str) -> Any:
    """Unpack cuda-python's ``(error, *values)`` tuples; raise on an error code."""
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        raise PatchGuardError(cuda_error_text(cuda_runtime(), err, what))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def native_handle(obj: Any) -> int:
    """The address behind a cuda-python object (stream); ``int()`` is deprecated from 13.0."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def cuda_unavailable_reason() -> Optional[str]:
    """None when a CUDA GPU is usable here, else why not (one line, with the CUDA error and fix)."""
    try:
        cudart = cuda_runtime()
    except MissingDependencyError as exc:
        return str(exc)
    try:
        result = cudart.cudaGetDeviceCount()
    except RuntimeError as exc:
        return driver_load_failure(exc)
    try:
        count = cuda_call(result, "cudaGetDeviceCount")
    except PatchGuardError as exc:
        return str(exc)
    return None if count else "cudaGetDeviceCount found no CUDA GPU"


def driver_load_failure(exc: BaseException) -> str:
    """cuda-bindings 12.6-12.8 raise (not return an error) when libcuda.so.1 cannot be loaded."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"cuda-python cannot load the NVIDIA driver ({first}): no driver is installed, or libcuda.so.1 "
        "is not on the library path (a container needs the GPU passed in, e.g. --runtime nvidia)"
    )


def gpu_count() -> int:
    """Number of CUDA devices, 0 when there is no driver, device or cuda-python.

    Why there are none is :func:`cuda_unavailable_reason`; say that, not "no GPU".
    """
    try:
        cudart = cuda_runtime()
    except MissingDependencyError:
        return 0
    try:
        err, count = cudart.cudaGetDeviceCount()
    except RuntimeError:  # libcuda.so.1 missing (see driver_load_failure)
        return 0
    return int(count) if int(err) == 0 and count else 0


@dataclass(frozen=True)
class DeviceFacts:
    """What a CUDA device says about itself, as the sidecar records it."""

    name: str
    compute_capability: str  # "major.minor"
    sm_count: int


def device_facts(device: int = 0) -> DeviceFacts:
    """Name, compute capability and streaming-multiprocessor count of a CUDA device."""
    cudart = cuda_runtime()
    props = cuda_call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
    return DeviceFacts(name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}",
                       int(props.multiProcessorCount))
