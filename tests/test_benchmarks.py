"""The benchmark scripts run in their short (CI) mode and print their figures.

Speed is reported, never asserted: these tests only check that each script
runs to the end and prints the numbers the README quotes.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["int8.py", "int8_agreement.py"])
def test_benchmark_scripts_have_help(script: str) -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "python benchmarks/" in result.stdout


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)  # the figures, visible with pytest -s or in the CI log on failure
    return done.stdout


@pytest.mark.slow
def test_certify_benchmark_short() -> None:
    out = run("certify.py", "--short")
    assert re.search(r"26x26x10 batch \d+", out) and re.search(r"26x26x1000 batch \d+", out)
    assert re.search(r"\d+(\.\d+)? ms", out)


@pytest.mark.slow
def test_int8_benchmark_short() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = run("int8.py", "--short")
    assert re.search(r"\d+(\.\d+)?x", out), out


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_pipeline_memory_short() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("cv2")
    out = run("pipeline_memory.py", "--frames", "400", "--warmup", "100")
    assert "MiB" in out


def test_bench_vs_run_short() -> None:
    pytest.importorskip("torch")
    out = run("bench_vs_run.py", "--short")
    assert re.search(r"certify\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+", out), out


def test_feature_defenses_benchmark_short() -> None:
    out = run("feature_defenses.py", "--short")
    assert re.search(r"mask \d+\.\d+ ms \| double k=6 \d+\.\d+ ms", out), out
    assert re.search(r"detection \d+\.\d+ ms \| top-3 certificate \d+\.\d+ ms", out), out


@pytest.mark.fashion_mnist
def test_smoothing_benchmark_short() -> None:
    pytest.importorskip("torch")
    out = run("smoothing.py", "--short")
    assert re.search(r"28 views per frame", out) and re.search(r"36 views per frame", out), out
    assert re.search(r"generate\+score\s+median \d+\.\d+ ms", out), out
    assert re.search(r"mask-ds\s+decide\+certify median \d+\.\d+ ms", out), out
