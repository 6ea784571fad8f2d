"""The provider list handed to onnxruntime: TensorRT EP options, CUDA after it, CPU last.

Checked against onnxruntime itself: every provider name is one onnxruntime
knows (``get_all_providers``), the list is accepted by ``InferenceSession``
(the CPU build drops the GPU providers with a warning and still runs), and
where the TensorRT EP is available the session reports our options back.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from _export_fixtures import export_small

from patchguard.runtime.backends.onnxrt import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    TRT_EP_MAX_BATCH,
    OnnxRuntimeBackend,
    precision_from_name,
    provider_chain,
    trt_cache_dir,
)
from patchguard.runtime.errors import PatchGuardError

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("torch")  # the small model is exported from PyTorch
    folder = tmp_path_factory.mktemp("providers")
    fp32 = export_small(folder, fp16=True)
    return fp32, folder / "small.fp16.onnx"


@pytest.mark.parametrize("name,precision", [
    ("model.onnx", "fp32"), ("small.fp16.onnx", "fp16"), ("b17.int8.onnx", "int8"),
    ("fp16.onnx", "fp32"), ("model.INT8.onnx", "int8"), ("a.b.onnx", "fp32"),
])
def test_precision_from_pg_export_file_names(tmp_path, name, precision):
    assert precision_from_name(tmp_path / name) == precision


def test_tensorrt_chain_options(models):
    _, fp16 = models
    chain = provider_chain(TRT_EP, fp16, "input", (1, 28, 28), precision_from_name(fp16))
    assert [name for name, _ in chain] == [TRT_EP, CUDA_EP, CPU_EP]
    assert set(name for name, _ in chain) <= set(ort.get_all_providers())
    options = chain[0][1]
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False
    assert options["trt_profile_min_shapes"] == "input:1x1x28x28"
    assert options["trt_profile_opt_shapes"] == "input:1x1x28x28"
    assert options["trt_profile_max_shapes"] == f"input:{TRT_EP_MAX_BATCH}x1x28x28"
    cache = fp16.parent / "small.fp16.onnx.trt-cache"
    assert cache.is_dir()
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(cache)
    assert options["trt_timing_cache_enable"] is True and options["trt_timing_cache_path"] == str(cache)
    assert "trt_int8_calibration_table_name" not in options  # QDQ graphs must not get one


def test_int8_and_cuda_chains(tmp_path):
    int8 = tmp_path / "m.int8.onnx"
    options = provider_chain(TRT_EP, int8, "x", (3, 224, 224), "int8")[0][1]
    assert options["trt_int8_enable"] is True and options["trt_fp16_enable"] is False
    assert options["trt_profile_max_shapes"] == f"x:{TRT_EP_MAX_BATCH}x3x224x224"
    assert provider_chain(CUDA_EP, int8, "x", (3, 224, 224)) == [(CUDA_EP, {"device_id": 0}), (CPU_EP, {})]
    assert provider_chain(CPU_EP, int8, "x", (3, 224, 224)) == [(CPU_EP, {})]


def test_no_cache_where_the_folder_cannot_be_made(tmp_path):
    model = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.trt-cache").write_text("a file where the cache folder would go")
    assert trt_cache_dir(model) is None
    options = provider_chain(TRT_EP, model, "input", (1, 28, 28))[0][1]
    assert "trt_engine_cache_enable" not in options and "trt_engine_cache_path" not in options


def test_onnxruntime_accepts_the_chain(models):
    _, fp16 = models
    chain = provider_chain(TRT_EP, fp16, "input", (1, 28, 28), "fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU build warns that it lacks the GPU providers
        session = ort.InferenceSession(str(fp16), providers=[n for n, _ in chain],
                                       provider_options=[o for _, o in chain])
    used = session.get_providers()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    out = session.run(None, {"input": x})[0]
    assert out.shape == (2, 24, 24, 10)
    if TRT_EP in used:
        # A GPU build with TensorRT: onnxruntime reports the options it took, as strings.
        reported = session.get_provider_options()[TRT_EP]
        assert reported["trt_fp16_enable"] == "1"
        assert reported["trt_profile_max_shapes"] == chain[0][1]["trt_profile_max_shapes"]
        assert reported["trt_engine_cache_path"] == chain[0][1]["trt_engine_cache_path"]
    else:
        assert used == [CPU_EP]


def test_cpu_backend_session_and_missing_tensorrt(models):
    fp32, _ = models
    with OnnxRuntimeBackend(fp32) as backend:
        assert backend.provider == CPU_EP and backend.max_batch is None
        assert list(backend._session.get_provider_options()) == [CPU_EP]
    if TRT_EP not in ort.get_available_providers():
        with pytest.raises(PatchGuardError, match="requested provider was tensorrt, but available providers"):
            OnnxRuntimeBackend(fp32, provider="tensorrt")


@pytest.mark.gpu
def test_cuda_ep_backend(models):
    fp32, _ = models
    if CUDA_EP not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA execution provider")
    x = np.random.default_rng(2).standard_normal((5, 1, 28, 28)).astype(np.float32)
    with OnnxRuntimeBackend(fp32) as reference, OnnxRuntimeBackend(fp32, provider="cuda") as cuda:
        assert cuda.provider == CUDA_EP and cuda.max_batch is None
        want, got = reference.infer(x), cuda.infer(x)
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-2


@pytest.mark.gpu
def test_tensorrt_ep_backend_runs_in_chunks(models):
    fp32, fp16 = models
    if TRT_EP not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no TensorRT execution provider")
    x = np.random.default_rng(1).standard_normal((TRT_EP_MAX_BATCH + 3, 1, 28, 28)).astype(np.float32)
    with OnnxRuntimeBackend(fp32) as reference, OnnxRuntimeBackend(fp16, provider="tensorrt") as trt:
        assert trt.provider == TRT_EP and trt.max_batch == TRT_EP_MAX_BATCH
        want, got = reference.infer(x), trt.infer(x)
    assert np.abs(got - want).max() / np.abs(want).max() <= 3e-2
