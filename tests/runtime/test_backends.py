"""Runtime backends on real exported ONNX files: loading, checks, errors, threads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from patchguard.runtime.backends import Backend, open_backend
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import METADATA_KEY


@pytest.fixture(scope="module")
def small(small_onnx):
    return small_onnx


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def test_onnx_backend_reads_record_and_runs(small):
    with open_backend(small) as backend:
        assert isinstance(backend, Backend)
        assert backend.name == "onnxruntime" and backend.provider == "CPUExecutionProvider"
        assert backend.record.arch == "smallbagnet" and backend.record.map_size == (24, 24)
        for n in (1, 5):
            out = backend.infer(batch(n))
            assert out.shape == (n, 24, 24, 10) and out.dtype == np.float32
    with pytest.raises(PatchGuardError, match="closed"):
        backend.infer(batch(1))


def test_infer_all_runs_in_batches_and_prepares_each(small):
    """The one batched path (export parity, pg-certify, the INT8 benchmark)."""
    x = batch(7, seed=3)
    seen: list[int] = []
    with open_backend(small) as backend:
        whole = backend.infer(x)
        assert np.allclose(backend.infer_all(x, 3), whole, atol=1e-5)
        frames = [(255 * (img[0] - img.min()) / np.ptp(img)).astype(np.uint8) for img in x]
        from patchguard.runtime.preprocess import normalize

        prepared = backend.infer_all(frames, 2, prepare=lambda chunk: normalize(np.stack(chunk), backend.record),
                                     on_progress=seen.append)
        assert np.allclose(prepared, backend.infer(normalize(np.stack(frames), backend.record)), atol=1e-5)
        assert seen == [2, 2, 2, 1]
        assert backend.infer_all(x[:0]).shape == (0, 24, 24, 10)
        with pytest.raises(PatchGuardError, match="at least 1"):
            backend.infer_all(x, 0)


def test_input_checks(small):
    with open_backend(small) as backend:
        with pytest.raises(PatchGuardError, match="float32"):
            backend.infer(batch(1).astype(np.float64))
        with pytest.raises(PatchGuardError, match=r"\(B, 1, 28, 28\)"):
            backend.infer(np.zeros((1, 3, 28, 28), np.float32))
        with pytest.raises(PatchGuardError, match="numpy"):
            backend.infer([[0.0]])  # type: ignore[arg-type]


def test_missing_provider_names_the_available_ones(small):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider installed")
    with pytest.raises(PatchGuardError, match="available providers are .*CPUExecutionProvider"):
        open_backend(small, provider="cuda")


@pytest.mark.parametrize("content", [b"", os.urandom(2048), b"\x08\x07" + b"\x00" * 64])
def test_corrupt_onnx_is_one_line(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(PatchGuardError) as info:
        open_backend(path)
    assert "bad.onnx" in str(info.value) and "\n" not in str(info.value)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(PatchGuardError, match="does not exist"):
        open_backend(tmp_path / "gone.onnx")
    with pytest.raises(PatchGuardError, match="does not exist"):
        open_backend(tmp_path / "gone.plan")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(PatchGuardError, match=".onnx, .plan"):
        open_backend(tmp_path / "model.bin")


def test_plan_needs_its_sidecar_and_tensorrt(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(os.urandom(1024))
    with pytest.raises(PatchGuardError, match="model.plan.json is missing"):
        open_backend(plan)
    (tmp_path / "model.plan.json").write_text("{not json")
    with pytest.raises(PatchGuardError, match="sidecar"):
        open_backend(plan)


def _rewrite_metadata(source, target, **changes):
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    if changes:
        data = json.loads(props[METADATA_KEY])
        data.update(changes)
        data.pop("map_size", None)
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(data))
    onnx.save(model, str(target))
    return target


def test_model_without_metadata_is_refused(small, tmp_path):
    path = _rewrite_metadata(small, tmp_path / "bare.onnx")
    with pytest.raises(PatchGuardError, match="no 'patchguard' metadata"):
        open_backend(path)


def test_map_size_contradicting_metadata_is_refused(small, tmp_path):
    path = _rewrite_metadata(small, tmp_path / "liar.onnx", receptive_field=3)  # would be a 26x26 map
    with pytest.raises(PatchGuardError, match="24x24x10 map .* needs 26x26x10") as info:
        open_backend(path)
    assert "\n" not in str(info.value)


def test_infer_is_thread_safe(small):
    inputs = [batch(2, seed) for seed in range(8)]
    with open_backend(small) as backend:
        serial = [backend.infer(x) for x in inputs]
        results = [None] * len(inputs)

        def work(i):
            results[i] = backend.infer(inputs[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def test_importing_backends_loads_no_heavy_module():
    code = (
        "import sys, patchguard.runtime.backends, patchguard.runtime.backends.tensorrt, "
        "patchguard.runtime.backends.onnxrt\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
