"""PatchGuard-Edge: provably patch-robust image classification, from a PyTorch
BagNet to ONNX Runtime and TensorRT on the robot.

The stages live in their own folders and install under this name:
``patchguard.models`` (BagNets, checkpoints, training; torch),
``patchguard.export`` (torch -> ONNX -> fp16 / INT8 -> TensorRT engine),
``patchguard.calibration`` (INT8 calibration) and ``patchguard.runtime``
(backends, sources, masking and certificates; no torch). See README.md and
docs/architecture.md.
"""
from __future__ import annotations

import pkgutil
from importlib import metadata

# The stages install beside this file; from a checkout's root, where this folder
# shadows the installed package, they are found in the installed one.
__path__ = pkgutil.extend_path(__path__, __name__)

try:
    __version__ = metadata.version("patchguard-edge")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
