"""ONNX files as the export stage hands them on: load, check, label, save.

Torch-free on purpose: ``pg-export --onnx model.onnx`` on a Jetson runs this
with only the ``onnx`` package. The model record travels in the metadata
entry ``patchguard`` (docs/architecture.md). Graph input ``input``: float32
(B, C, H, W) with a symbolic batch axis; graph output ``local_logits``:
float32 (B, H', W', K) for a BagNet, ``logits`` (B, K) for an ordinary
classifier run by a view defense (README.md, "View defenses").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..runtime.errors import PatchGuardError, first_line, lazy_import
from ..runtime.files import PathText, atomic_path
from ..runtime.metadata import METADATA_KEY, ModelRecord, record_from_metadata

INPUT_NAME = "input"
OUTPUT_NAME = "local_logits"
VIEW_OUTPUT_NAME = "logits"
PRODUCER = "patchguard-edge"
PRECISIONS = ("fp32", "fp16", "int8")
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def onnx_module() -> Any:
    return lazy_import("onnx", "onnx")


def load_onnx(path: PathText) -> Any:
    """``onnx.ModelProto`` of ``path``, or a one-line error (missing, not ONNX)."""
    onnx = onnx_module()
    path = Path(path)
    if not path.is_file():
        raise PatchGuardError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise PatchGuardError(f"{path} is not an ONNX model: {first_line(exc)}") from None
    if not model.graph.node:
        raise PatchGuardError(f"{path} is not an ONNX model: its graph is empty")
    return model


def output_name(record: ModelRecord) -> str:
    """The graph output's name: local logits for a BagNet, logits for a view defense's classifier."""
    return OUTPUT_NAME if record.is_local else VIEW_OUTPUT_NAME


def set_record(model: Any, record: ModelRecord, **extra: Any) -> Any:
    """Write ``record`` into the ``patchguard`` metadata entry (replacing an old one).

    ``extra``: more keys of that JSON object, e.g. ``precision="int8"`` and the
    ``int8`` description of a quantized model (the runtime reads only the record).
    """
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for prop in keep:
        model.metadata_props.add(key=prop.key, value=prop.value)
    value = json.dumps({**record.to_dict(), **extra}, sort_keys=True) if extra else record.to_json()
    model.metadata_props.add(key=METADATA_KEY, value=value)
    model.producer_name = PRODUCER
    return model


def copy_metadata(source: Any, model: Any) -> Any:
    """Give ``model`` every metadata entry and the doc string of ``source`` (a converter's or
    quantizer's output keeps none of them)."""
    del model.metadata_props[:]
    for prop in source.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.doc_string = source.doc_string
    return model


def get_record(model: Any, where: str = "the model") -> ModelRecord:
    """The record in an ONNX proto's ``patchguard`` metadata entry."""
    return record_from_metadata({p.key: p.value for p in model.metadata_props}, where)


def precision_of(model: Any) -> str:
    """"int8" for a QDQ graph, "fp16" for float16 weights, else "fp32"."""
    onnx = onnx_module()
    if any(node.op_type in _QDQ_OPS for node in model.graph.node):
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def _image_input(model: Any) -> Any:
    """The graph's one input that is not an initializer, or a one-line error."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1 or not model.graph.output:
        raise PatchGuardError(
            f"expected one image input and a local-logit output, found {len(inputs)} inputs"
        )
    return inputs[0]


def input_name(model: Any) -> str:
    """The name of the graph's image input (``input`` in the models pg-export writes)."""
    return str(_image_input(model).name)


def io_shapes(model: Any) -> tuple[list[Any], list[Any]]:
    """Input and output shapes; symbolic axes as their names, unknown ones as None."""

    def dims(value: Any) -> list[Any]:
        out = []
        for d in value.type.tensor_type.shape.dim:
            out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        return out

    return dims(_image_input(model)), dims(model.graph.output[0])


def check_layout(model: Any, record: ModelRecord) -> None:
    """The input is (batch, C, H, W) with a symbolic batch and the record's size."""
    shape_in, shape_out = io_shapes(model)
    expected = [record.model_channels, *record.input_size]
    if len(shape_in) != 4 or list(shape_in[1:]) != expected:
        raise PatchGuardError(f"model input is {shape_in}, expected (batch, {expected})")
    if isinstance(shape_in[0], int) and shape_in[0] > 0:
        raise PatchGuardError(
            f"model input has a fixed batch of {shape_in[0]}; the batch axis must be dynamic"
        )
    if len(shape_out) != 1 + len(record.output_shape):
        what = "local logits (B, H, W, C)" if record.is_local else "logits (B, C)"
        raise PatchGuardError(f"model output is {shape_out}, expected {what}")


def save_onnx(model: Any, path: PathText) -> Path:
    """onnx.checker the model, then write it atomically."""
    onnx = onnx_module()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PatchGuardError(f"exported model fails onnx.checker: {first_line(exc)}") from None
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)
