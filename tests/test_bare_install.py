"""A robot's base install (numpy + click): every --help works and every command
that needs an extra says which one in one line, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = {
    "pg-train": "patchguard.models.cli:train_main",
    "pg-attack": "patchguard.models.cli:attack_main",
    "pg-export": "patchguard.export.cli:main",
    "pg-certify": "patchguard.runtime.cli.certify:main",
    "pg-run": "patchguard.runtime.cli.run:main",
    "pg-bench": "patchguard.runtime.cli.bench:main",
    "pg-serve": "patchguard.runtime.cli.serve:main",
}
# What a base install lacks: the heavy extras are blocked in the child process.
# Each case starts a fresh interpreter.
pytestmark = pytest.mark.slow

BLOCK = ("import sys\nfor m in ('torch', 'onnx', 'onnxruntime', 'cv2', 'tensorrt', 'pytriton', 'ray'):\n"
         "    sys.modules[m] = None\n")


def run(target: str, args: list[str]) -> subprocess.CompletedProcess:
    module, name = target.split(":")
    code = BLOCK + f"from {module} import {name}\n{name}({args!r}, prog_name='cmd')\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_without_extras(command: str) -> None:
    done = run(COMMANDS[command], ["--help"])
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "Examples" in done.stdout


@pytest.mark.parametrize("command, args, extra", [
    ("pg-train", ["--out", "unused"], "export"),
    ("pg-attack", ["--limit", "1"], "export"),
    ("pg-export", [], "export"),
    ("pg-export", ["--onnx", "model.onnx", "--fp16"], "onnx"),  # on the target: no torch needed
    ("pg-run", ["--engine", "model.onnx", "--camera", "0"], "cpu"),
    ("pg-serve", ["--model", "model.onnx"], "serve"),
])
def test_missing_extra_is_one_line(command: str, args: list[str], extra: str, tmp_path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used: the extra is missing first")
    args = [str(model) if a == "model.onnx" else a for a in args]
    done = run(COMMANDS[command], args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"patchguard-edge[{extra}]" in lines[0], done.stderr
