"""fp32 ONNX -> fp16 ONNX (onnxconverter-common), torch-free.

Weights and activations become float16; graph input and output stay float32
(``keep_io_types=True``) so every backend keeps the same float32 face and the
runtime never needs to know the precision. This fp16 graph is also what
TensorRT 11 (no FP16 builder flag) and TensorRT 10 build their strongly typed
fp16 engines from.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

from ..runtime.errors import PatchGuardError, lazy_import
from .onnxfile import precision_of


def to_fp16(model: Any) -> Any:
    """A float16 copy of an fp32 ``onnx.ModelProto``; metadata is kept."""
    if precision_of(model) != "fp32":
        raise PatchGuardError(f"fp16 conversion needs an fp32 model, got {precision_of(model)}")
    float16 = lazy_import("onnxconverter_common.float16", "onnx")
    with warnings.catch_warnings():
        # It warns for every weight it clamps into float16 range; parity reports the effect.
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(copy.deepcopy(model), keep_io_types=True)
    converted.doc_string = model.doc_string + " (float16 weights, float32 I/O)"
    return converted
