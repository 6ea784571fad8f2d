#!/usr/bin/env bash
# Device smoke check (issue 18): exercises on a GPU with TensorRT what the development machines
# cannot (engines, the TensorRT backend, onnxruntime's CUDA/TensorRT providers, GPU tests) and
# skips those steps, one line each, where TensorRT or a GPU is missing. Exit 0: nothing failed.
#   tools/device_smoke.sh [--out DIR] [--onnx-dir DIR] [--no-bagnet17] [--iterations N]
# PYTHON picks the interpreter (default: the venv's python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" tools/device_smoke.py "$@"
