"""Faulty copies of a real exported ONNX, for the fault tests and ``tools/fault_table.py``."""
from __future__ import annotations

import json
from pathlib import Path


def with_metadata(source: Path, target: Path, **change: object) -> Path:
    """``source`` with its ``patchguard`` record changed (map_size dropped, so it is derived again)."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "patchguard":
            record = json.loads(prop.value)
            record.update(change)
            record.pop("map_size", None)
            prop.value = json.dumps(record)
    onnx.save(model, str(target))
    return target


def with_huge_constant(source: Path, target: Path) -> Path:
    """``source`` whose output also depends on a 10^15-element ConstantOfShape:
    it loads, and onnxruntime fails at the first inference."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    out = graph.output[0].name
    graph.node.extend([
        helper.make_node("Constant", [], ["huge_shape"], value=helper.make_tensor(
            "huge_shape_value", TensorProto.INT64, [3], [100000, 100000, 100000])),
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("ReduceMax", ["huge"], ["huge_max"], keepdims=0),
        helper.make_node("Add", [out, "huge_max"], ["bombed"]),
    ])
    graph.output[0].name = "bombed"
    onnx.save(model, str(target))
    return target
