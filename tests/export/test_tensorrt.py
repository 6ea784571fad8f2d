"""TensorRT engines: the attributes the code uses, and real builds where a GPU and tensorrt exist.

No development machine here has TensorRT: the ``tensorrt``-marked tests skip
with their reason, the attribute checks run wherever ``tensorrt`` /
cuda-python import.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import types

import numpy as np
import pytest
from _export_fixtures import assert_one_line_error, export_small, run_cli

from patchguard.export.engine import (
    TRT10_BUILD_ATTRIBUTES,
    TRT_BUILD_ATTRIBUTES,
    engine_unavailable_reason,
    network_flags,
)
from patchguard.runtime.backends.cuda import CUDA_ATTRIBUTES
from patchguard.runtime.backends.tensorrt import TRT_RUNTIME_ATTRIBUTES
from patchguard.runtime.errors import PatchGuardError

REASON = engine_unavailable_reason()


def needs_engine(test):
    """Marked ``tensorrt`` and ``gpu``; skipped, with the reason, where no engine can be built."""
    no_torch = importlib.util.find_spec("torch") is None  # the fixtures are exported from PyTorch
    for mark in (pytest.mark.tensorrt, pytest.mark.gpu,
                 pytest.mark.skipif(REASON is not None, reason=f"no TensorRT engine here: {REASON}"),
                 pytest.mark.skipif(no_torch, reason="exports its models with torch (tools/device_smoke.sh "
                                    "--onnx-dir checks engines without it)")):
        test = mark(test)
    return test


def missing_attributes(module, dotted_names):
    missing = []
    for dotted in dotted_names:
        obj = module
        for part in dotted.split("."):
            if not hasattr(obj, part):
                missing.append(dotted)
                break
            obj = getattr(obj, part)
    return missing


def test_cuda_python_has_every_attribute_we_use():
    try:
        cudart = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        cudart = pytest.importorskip("cuda.cudart")
    assert missing_attributes(cudart, CUDA_ATTRIBUTES) == []


def test_tensorrt_has_every_attribute_we_use():
    trt = pytest.importorskip("tensorrt")
    used = TRT_BUILD_ATTRIBUTES + TRT_RUNTIME_ATTRIBUTES
    if int(trt.__version__.split(".")[0]) == 10:
        used += TRT10_BUILD_ATTRIBUTES
    assert missing_attributes(trt, used) == []


@pytest.mark.parametrize("version,strongly_typed_flag", [
    ("10.3.0", True), ("10.13.2", True), ("11.0.0", False), ("11.4.1", False),
])
def test_every_precision_builds_strongly_typed(version, strongly_typed_flag):
    # A stand-in for the tensorrt module (not our code): TensorRT 10 needs the creation
    # flag for a strongly typed network, whatever the precision; TensorRT 11 is always
    # strongly typed and ignores the (deprecated) flag, so none is passed.
    fake = types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
    )
    assert network_flags(fake) == (1 << 1 if strongly_typed_flag else 0)


def test_reason_is_one_phrase_without_tensorrt():
    if REASON is None:
        pytest.skip("this machine can build engines")
    assert REASON and "\n" not in REASON


# -- real engines (GPU + tensorrt only) ----------------------------------------------------------

@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from patchguard.export.engine import build_engine

    folder = tmp_path_factory.mktemp("trt")
    fp32 = export_small(folder, fp16=True)
    fp16 = folder / "small.fp16.onnx"
    infos = {
        "fp32": build_engine(fp32, folder / "small.plan", max_batch=4),
        "fp16": build_engine(fp16, folder / "small.fp16.plan", max_batch=4),
    }
    return folder, infos


@needs_engine
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-2), ("fp16", 3e-2)])
@pytest.mark.parametrize("batch", [1, 4])
def test_engine_matches_onnxruntime(engines, precision, tolerance, batch):
    from patchguard.runtime.backends import open_backend

    folder, infos = engines
    plan = folder / ("small.plan" if precision == "fp32" else "small.fp16.plan")
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    with open_backend(folder / "small.onnx") as reference, open_backend(plan) as engine:
        want, got = reference.infer(x), engine.infer(x)
        assert engine.name == "tensorrt" and engine.max_batch == 4
    assert got.shape == (batch, 24, 24, 10) and got.dtype == np.float32
    assert np.abs(got - want).max() / np.abs(want).max() <= tolerance
    assert infos[precision].precision == precision


@needs_engine
def test_no_tf32_engine_keeps_fp32_products(tmp_path):
    from patchguard.export.engine import build_engine
    from patchguard.runtime.backends import open_backend

    source = export_small(tmp_path)
    build_engine(source, tmp_path / "full.plan", max_batch=4, tf32=False)
    x = np.random.default_rng(7).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with open_backend(source) as reference, open_backend(tmp_path / "full.plan") as engine:
        want, got = reference.infer(x), engine.infer(x)
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


@needs_engine
def test_engine_sidecar_and_refusals(engines):
    import tensorrt as trt

    from patchguard.runtime.backends import open_backend

    folder, _ = engines
    sidecar = json.loads((folder / "small.plan.json").read_text())
    assert sidecar["engine"]["tensorrt_version"] == trt.__version__
    assert sidecar["engine"]["precision"] == "fp32" and sidecar["receptive_field"] == 5
    x = np.random.default_rng(5).standard_normal((6, 1, 28, 28)).astype(np.float32)
    with open_backend(folder / "small.plan") as engine:
        whole = engine.infer(x)  # larger than max_batch 4: run as 4 + 2
        np.testing.assert_allclose(whole, np.concatenate([engine.infer(x[:4]), engine.infer(x[4:])]))
    foreign = folder / "foreign.plan"
    foreign.write_bytes((folder / "small.plan").read_bytes())
    sidecar["engine"]["gpu_name"] = "Some Other GPU"
    sidecar["engine"]["tensorrt_version"] = "9.9.9"
    (folder / "foreign.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(PatchGuardError, match="was built for TensorRT 9.9.9.*Some Other GPU") as info:
        open_backend(foreign)
    assert "\n" not in str(info.value)


@needs_engine
def test_cli_builds_the_engine_from_the_fp16_onnx(tmp_path):
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--fp16", "--engine", "--max-batch", "4",
                      "--out", str(tmp_path), "--parity-n", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "smallbagnet.parity.json").read_text())
    rows = {row["artifact"]: row for row in report["rows"]}
    assert rows["smallbagnet.plan"]["precision"] == "fp16" and rows["smallbagnet.plan"]["within_tolerance"]


@needs_engine
def test_cli_engine_from_onnx_without_torch(small_onnx, tmp_path):
    import subprocess
    import sys

    source = small_onnx
    out = tmp_path / "jetson"
    code = ("import sys; sys.modules['torch'] = None\nfrom patchguard.export.cli import main\n"
            f"main(['--onnx', {str(source)!r}, '--fp16', '--engine', '--out', {str(out)!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "small.plan").is_file() and (out / "small.plan.json").is_file()


@needs_engine
def test_bagnet17_engines_at_224(tmp_path):
    import torch

    from patchguard.export.engine import build_engine
    from patchguard.export.fp16 import to_fp16
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import build_model, record_for
    from patchguard.runtime.backends import open_backend

    torch.manual_seed(17)
    record = record_for("bagnet17", num_classes=10)
    proto = export_onnx(build_model(record), record)
    fp32 = save_onnx(proto, tmp_path / "b17.onnx")
    fp16 = save_onnx(to_fp16(proto), tmp_path / "b17.fp16.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    with open_backend(fp32) as reference:
        want = reference.infer(x)
    for source, tolerance in ((fp32, 1e-2), (fp16, 3e-2)):
        plan = tmp_path / (source.name.replace(".onnx", "") + ".plan")
        build_engine(source, plan, max_batch=8)
        with open_backend(plan) as engine:
            for n in (1, 8):
                got = engine.infer(x[:n])
                assert got.shape == (n, 26, 26, 10)
                assert np.abs(got - want[:n]).max() / np.abs(want[:n]).max() <= tolerance


def test_engine_refuses_without_a_gpu_in_one_line(small_onnx, tmp_path):
    if REASON is None:
        pytest.skip("this machine can build engines")
    from patchguard.export.engine import build_engine

    source = small_onnx
    with pytest.raises(PatchGuardError, match="cannot build a TensorRT engine"):
        build_engine(source, tmp_path / "small.plan")
    assert not (tmp_path / "small.plan").exists()
    assert_one_line_error(run_cli(["--onnx", str(source), "--engine", "--out", str(tmp_path / "o")]),
                          "--engine")


