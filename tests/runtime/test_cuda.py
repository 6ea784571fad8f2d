"""CUDA errors through cuda-python: the name, CUDA's text and the likely cause and fix, in one line.

cuda-python is real here wherever it imports (torch 2.14 brings cuda-bindings
13.x): on a machine without a driver its ``cudaGetDeviceCount`` fails for real
(cudaErrorInsufficientDriver), the error a JetPack 6 user with cuda-python 13
meets. The statuses tested are cuda-python's own cudaError_t values.
"""
from __future__ import annotations

import sys
import types

import pytest

from patchguard.runtime.backends.cuda import cuda_call, cuda_unavailable_reason, driver_fix, native_handle
from patchguard.runtime.errors import PatchGuardError


def cudart():
    try:
        import cuda.bindings.runtime as runtime
    except ImportError:
        runtime = pytest.importorskip("cuda.cudart")
    return runtime


# -- CUDA errors: name, text, likely cause and fix, in one line ----------------------------------

@pytest.mark.parametrize("name,fragment", [
    ("cudaErrorNoDevice", "CUDA_VISIBLE_DEVICES"),
    ("cudaErrorStubLibrary", "stubs folder"),
    ("cudaErrorSystemDriverMismatch", "reboot"),
    ("cudaErrorMemoryAllocation", "--max-batch"),
    ("cudaErrorInsufficientDriver", "driver"),
])
def test_cuda_error_names_the_error_and_its_fix(name, fragment):
    runtime = cudart()
    status = getattr(runtime.cudaError_t, name)
    with pytest.raises(PatchGuardError) as info:
        cuda_call((status, None), "cudaGetDeviceCount")
    text = str(info.value)
    assert text.startswith(f"CUDA cudaGetDeviceCount failed: {name} (")
    assert fragment in text and "\n" not in text


def test_cuda_success_unpacks_values():
    runtime = cudart()
    assert cuda_call((runtime.cudaError_t.cudaSuccess, 3), "x") == 3
    assert cuda_call((runtime.cudaError_t.cudaSuccess, 1, 2), "x") == (1, 2)
    assert cuda_call((runtime.cudaError_t.cudaSuccess,), "x") is None


def test_reason_for_no_gpu_carries_the_cuda_error():
    runtime = cudart()
    err, count = runtime.cudaGetDeviceCount()
    reason = cuda_unavailable_reason()
    if int(err) == 0 and count:
        assert reason is None
        return
    # The real failing call of this machine (no driver here: cudaErrorInsufficientDriver).
    assert reason is not None and "\n" not in reason
    if int(err) != 0:
        assert reason.startswith(f"CUDA cudaGetDeviceCount failed: {err.name}")
    else:
        assert reason == "cudaGetDeviceCount found no CUDA GPU"


@pytest.mark.parametrize("driver,runtime,fragments", [
    (12060, 13000, ["CUDA 13.0", "CUDA 12.6", "pip install 'cuda-python>=12,<12.7'"]),  # JetPack 6.1/6.2
    (12020, 12090, ["CUDA 12.9", "CUDA 12.2", "'cuda-python>=12,<12.3'"]),
    (0, 13000, ["no NVIDIA driver is loaded"]),
])
def test_driver_fix_names_the_cuda_python_to_install(driver, runtime, fragments):
    text = driver_fix(driver, runtime)
    for fragment in fragments:
        assert fragment in text


def test_driver_that_cannot_be_loaded_is_named(monkeypatch):
    # cuda-bindings 12.6 (what JetPack 6 gets) raises from cudaGetDeviceCount when
    # libcuda.so.1 is missing, where 13.x returns cudaErrorInsufficientDriver; this is
    # the text 12.6.2.post1 raised on a machine without a driver.
    def no_driver():
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    stand_in = types.SimpleNamespace(cudaGetDeviceCount=no_driver)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", stand_in)
    reason = cuda_unavailable_reason()
    assert reason is not None and "\n" not in reason
    assert reason.startswith("cuda-python cannot load the NVIDIA driver (Failed to dlopen libcuda.so.1)")
    from patchguard.runtime.backends.cuda import gpu_count

    assert gpu_count() == 0


def test_stream_handle_for_execute_async_v3():
    # int() of a cuda-python object is deprecated from cuda-bindings 13.0 (get_cuda_native_handle);
    # 12.x has no cuda.bindings.utils. Either way TensorRT gets the stream's address.
    runtime = cudart()
    assert native_handle(runtime.cudaStream_t(12345)) == 12345
