"""The TensorRT backend's parts that run without a GPU: the lock in ``close``, the
refusal of engines whose I/O is not one image in, one output out, and the
machine an engine may run on (TensorRT version, GPU name, capability, SM count).

Stand-ins replace only TensorRT's engine object, which cannot exist without a GPU.
"""
from __future__ import annotations

import json
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.backends.base import Backend
from patchguard.runtime.backends.cuda import DeviceFacts
from patchguard.runtime.backends.tensorrt import engine_io, machine_mismatches
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import EngineInfo, ModelRecord, read_sidecar, sidecar_path, sidecar_text

RECORD = ModelRecord(arch="tiny", num_classes=2, input_size=(8, 8), receptive_field=3, stride=1,
                     mean=(0.0,), std=(1.0,), in_channels=1)


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
