"""tools/device_smoke.sh runs everywhere: on a machine without TensorRT or a GPU its
export, BatchNorm and parity steps pass and every GPU step is one SKIP line, exit 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_STEPS = ("TensorRT engines", "TensorRT backend", "onnxruntime CUDA EP", "onnxruntime TensorRT EP",
             'pytest -m "tensorrt or gpu"')


@pytest.mark.slow
def test_device_smoke_without_a_gpu(tmp_path):
    pytest.importorskip("torch")
    from patchguard.export.engine import engine_unavailable_reason

    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "tools" / "device_smoke.sh"), "--out", str(tmp_path),
                           "--no-bagnet17", "--iterations", "2"], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for step in ("export bundled", "no BatchNormalization in bundled", "ONNX parity bundled"):
        assert any(line.startswith(f"PASS  {step}") for line in lines), done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert not [s for s in report["steps"] if s["status"] == "FAIL"]
    if engine_unavailable_reason() is not None:
        for step in GPU_STEPS[:2]:
            assert sum(line.startswith(f"SKIP  {step}:") for line in lines) == 1, done.stdout
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        for step in GPU_STEPS[2:4]:
            assert sum(line.startswith(f"SKIP  {step}:") for line in lines) == 1, done.stdout
