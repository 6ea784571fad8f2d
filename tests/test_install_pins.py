"""The install pins that keep a JetPack 6 machine working, checked by pip's own resolver.

- cuda-python must resolve below 13: 13.x needs a CUDA 13 (580+) driver and
  JetPack 6 ships a CUDA 12 one (cudaGetDeviceCount then fails with error 35).
- numpy's floor must admit JetPack 6's numpy 1.21.5, or pip replaces it with
  numpy 2.x, which JetPack's numpy-1.x builds of OpenCV / onnxruntime-gpu reject.

The dry run needs the package index; it skips, saying so, where it is unreachable.
It resolves ``.[cuda]``, the cuda-python pin that ``.[trt]`` takes: ``.[trt]``
itself cannot be resolved off NVIDIA's network, because pip's ``tensorrt-cu12``
packages are stubs that download the real wheels from NVIDIA's own index while
pip prepares their metadata (measured here: the resolver stops there).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")
requirements = pytest.importorskip("packaging.requirements")

JETPACK6_NUMPY = "1.21.5"  # Ubuntu 22.04's python3-numpy, what JetPack 6 runs on


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def spec_of(reqs: list[str], name: str):
    found = [requirements.Requirement(r) for r in reqs if requirements.Requirement(r).name == name]
    assert len(found) == 1, f"{name} not pinned once in {reqs}"
    return found[0].specifier


def test_numpy_floor_admits_jetpack_numpy():
    assert spec_of(project()["dependencies"], "numpy").contains(JETPACK6_NUMPY)


def test_cuda_python_stays_on_cuda_12():
    extras = project()["optional-dependencies"]
    spec = spec_of(extras["cuda"], "cuda-python")
    assert spec.contains("12.6.2") and spec.contains("12.9.10")
    assert not spec.contains("13.0.0") and not spec.contains("13.4.4")
    # [trt] takes its cuda-python from [cuda], and TensorRT's CUDA 12 build to match it.
    assert "patchguard-edge[cuda]" in extras["trt"]
    assert any(r.startswith("tensorrt-cu12") for r in extras["trt"])


def dry_run(target: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = ROOT / ".pytest_cache" / f"pip-report-{re.sub(r'[^a-z]', '', target)}.json"
    report.parent.mkdir(exist_ok=True)
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--disable-pip-version-check", "--report", str(report), target]
    done = subprocess.run(command + ["--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    if done.returncode != 0 and re.search(r"NewConnectionError|Name or service not known|Temporary failure "
                                          r"in name resolution|No matching distribution found for "
                                          r"(setuptools|click|numpy)", text):
        pytest.skip("the package index is unreachable from here")
    data = json.loads(report.read_text()) if report.is_file() else {}
    return done, data


def versions(data: dict) -> dict[str, str]:
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in data.get("install", [])}


def test_pip_resolves_cuda_python_12_for_the_cuda_extra():
    done, data = dry_run(".[cuda]")
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = versions(data)
    assert int(chosen["cuda-python"].split(".")[0]) == 12, chosen
