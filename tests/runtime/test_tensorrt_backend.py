"""The TensorRT backend's parts that run without a GPU: CUDA error text, the lock
in ``close``, and the refusal of engines whose I/O is not one image in, one
local-logit map out.

cuda-python is real here wherever it imports (torch 2.14 brings cuda-bindings
13.x): on a machine without a driver its ``cudaGetDeviceCount`` fails for real,
and the error path is the one a JetPack 6 user with the wrong cuda-python meets.
Stand-ins replace only TensorRT's engine object, which cannot exist without a GPU.
"""
from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.backends.base import Backend
from patchguard.runtime.backends.tensorrt import (
    DeviceFacts,
    EngineInfo,
    cuda_call,
    cuda_unavailable_reason,
    driver_fix,
    engine_io,
    machine_mismatches,
    read_sidecar,
    sidecar_path,
    sidecar_text,
)
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import ModelRecord

RECORD = ModelRecord(arch="tiny", num_classes=2, input_size=(8, 8), receptive_field=3, stride=1,
                     mean=(0.0,), std=(1.0,), in_channels=1)


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


# -- the lock: close waits for a running infer, and nothing runs after it ----------------------

class GatedBackend(Backend):
    """A test backend whose ``_run`` waits on a gate, recording what happens in which order."""

    serial = True

    def __init__(self) -> None:
        super().__init__(Path("gated.plan"), RECORD)
        self.events: list[str] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.events.append("run starts")
        self.entered.set()
        self.gate.wait(30)
        self.events.append("run ends")
        return np.zeros((len(batch), 6, 6, 2), np.float32)

    def _release(self) -> None:
        self.events.append("released")


def test_close_waits_for_a_running_infer():
    backend = GatedBackend()
    x = np.zeros((1, 1, 8, 8), np.float32)
    errors: list[str] = []

    def infer() -> None:
        try:
            backend.infer(x)
        except PatchGuardError as exc:
            errors.append(str(exc))

    runner = threading.Thread(target=infer)
    runner.start()
    assert backend.entered.wait(30)
    closer = threading.Thread(target=backend.close)
    closer.start()
    late = threading.Thread(target=infer)  # queued behind the running call
    late.start()
    closer.join(0.5)
    assert closer.is_alive(), "close() returned while infer was still using the buffers"
    assert backend.events == ["run starts"]
    backend.gate.set()
    for thread in (runner, closer, late):
        thread.join(30)
    # Nothing ran after the buffers were released; a call that came too late was refused.
    assert backend.events[-1] == "released" and backend.events.count("released") == 1
    assert backend.events[:2] == ["run starts", "run ends"]
    assert all("backend is closed" in e for e in errors)
    with pytest.raises(PatchGuardError, match="backend is closed"):
        backend.infer(x)
    backend.close()  # twice is fine
    assert backend.events.count("released") == 1


# -- engines with other I/O than one image in, one map out ----------------------------------

class StandInEngine:
    """The tensor-listing face of TensorRT's ICudaEngine (10 and 11), for a given I/O list."""

    def __init__(self, io: list[tuple[str, str]]) -> None:
        self._io = io

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> str:
        return dict(self._io)[name]


TRT = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"))


@pytest.fixture()
def sidecar_info(tmp_path):
    plan = tmp_path / "model.plan"
    info = EngineInfo(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                      precision="fp16", max_batch=8, input_name="input", output_name="local_logits")
    sidecar_path(plan).write_text(sidecar_text(RECORD, info))
    return plan, read_sidecar(plan)[1]


def test_engine_with_one_input_and_output_is_accepted(sidecar_info):
    plan, info = sidecar_info
    engine = StandInEngine([("input", "INPUT"), ("local_logits", "OUTPUT")])
    assert engine_io(engine, TRT, plan, info) == ("input", "local_logits")


def test_engine_with_two_outputs_is_refused(sidecar_info):
    plan, info = sidecar_info
    engine = StandInEngine([("input", "INPUT"), ("local_logits", "OUTPUT"), ("features", "OUTPUT")])
    with pytest.raises(PatchGuardError, match="one local-logit output") as err:
        engine_io(engine, TRT, plan, info)
    assert "features" in str(err.value) and "\n" not in str(err.value)


def test_engine_whose_names_differ_from_its_sidecar_is_refused(sidecar_info):
    plan, info = sidecar_info
    engine = StandInEngine([("images", "INPUT"), ("logits", "OUTPUT")])
    with pytest.raises(PatchGuardError, match="do not belong together"):
        engine_io(engine, TRT, plan, info)


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
    from patchguard.runtime.backends.tensorrt import gpu_count

    assert gpu_count() == 0


def test_stream_handle_for_execute_async_v3():
    # int() of a cuda-python object is deprecated from cuda-bindings 13.0 (get_cuda_native_handle);
    # 12.x has no cuda.bindings.utils. Either way TensorRT gets the stream's address.
    from patchguard.runtime.backends.tensorrt import native_handle

    runtime = cudart()
    assert native_handle(runtime.cudaStream_t(12345)) == 12345


# -- the machine an engine may run on: TensorRT version, GPU name, capability, SM count ---------

ORIN_AGX = DeviceFacts("Orin", "8.7", 16)
ORIN_NANO = DeviceFacts("Orin", "8.7", 8)


def engine_info(**changes) -> EngineInfo:
    base = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", sm_count=16,
                precision="fp16", max_batch=8, input_name="input", output_name="local_logits")
    return EngineInfo(**{**base, **changes})


def test_same_name_and_capability_but_other_sm_count_is_another_machine():
    assert machine_mismatches(engine_info(), "10.3.0", ORIN_AGX) == []
    # Every Orin module says "Orin", 8.7: only the SM count tells an AGX Orin from an Orin Nano.
    assert machine_mismatches(engine_info(), "10.3.0", ORIN_NANO) == ["SMs 16 (this machine: 8)"]
    wrong = machine_mismatches(engine_info(), "10.3.1", DeviceFacts("NVIDIA H200", "9.0", 132))
    assert [w.split()[0] for w in wrong] == ["TensorRT", "GPU", "compute", "SMs"]


def test_sidecar_without_sm_count_is_checked_on_the_rest(tmp_path):
    plan = tmp_path / "old.plan"
    data = json.loads(sidecar_text(RECORD, engine_info()))
    del data["engine"]["sm_count"], data["engine"]["tf32"]  # what pg-export wrote before it recorded them
    sidecar_path(plan).write_text(json.dumps(data))
    _, info = read_sidecar(plan)
    assert info.sm_count == 0 and info.tf32 is None
    assert machine_mismatches(info, "10.3.0", ORIN_NANO) == []
    assert machine_mismatches(info, "10.3.0", DeviceFacts("Orin", "8.6", 8)) == [
        "compute capability 8.7 (this machine: 8.6)"]


def test_sidecar_round_trip_and_corrupt_sm_count(tmp_path):
    plan = tmp_path / "m.plan"
    info = engine_info(precision="fp32", tf32=False)
    sidecar_path(plan).write_text(sidecar_text(RECORD, info))
    assert read_sidecar(plan)[1] == info
    data = json.loads(sidecar_path(plan).read_text())
    data["engine"]["sm_count"] = "many"
    sidecar_path(plan).write_text(json.dumps(data))
    with pytest.raises(PatchGuardError, match="is not a pg-export engine sidecar"):
        read_sidecar(plan)
