"""Models that keep the bundled model's metadata (r=5, s=1, 24x24 map) but lie
about it: built from its real ONNX with the ``onnx`` helper API (issue 10).

Each is a complete, runnable model with the same input and output shapes, so
only a proof from the graph (not a map-size check) can refuse it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _tensor(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def _parts(model):
    """(graph, features before the final Transpose, output name)."""
    graph = model.graph
    transpose = next(n for n in graph.node if n.op_type == "Transpose")
    return graph, transpose, graph.output[0].name


def _rename_output(graph, old: str, new: str) -> None:
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new


def _after_output(model, nodes: list, consts: list = (), *, source: str = "raw_logits"):
    """Rename the real output to ``source`` and append ``nodes`` that write the output."""
    graph, _, out = _parts(model)
    _rename_output(graph, out, source)
    graph.node.extend(nodes)
    graph.initializer.extend(consts)
    return model


def _before_transpose(model, make) -> object:
    """Insert nodes between the last NCHW features and the final Transpose.

    ``make(features, new_name)`` returns (nodes, consts) computing ``new_name``
    (same shape) from ``features``.
    """
    graph, transpose, _ = _parts(model)
    features = transpose.input[0]
    nodes, consts = make(features, "lied_features")
    index = list(graph.node).index(transpose)
    for k, node in enumerate(nodes):
        graph.node.insert(index + k, node)
    transpose.input[0] = "lied_features"
    graph.initializer.extend(consts)
    return model


def build_lying_models(bundled: Path) -> dict:
    """{name: ModelProto} of models that must be refused, each with the
    bundled model's metadata."""
    import onnx
    from onnx import helper

    def fresh():
        return onnx.load(str(bundled))

    models = {}
    channels = None
    probe = fresh()
    for init in probe.graph.initializer:
        if len(init.dims) == 4:
            channels = init.dims[0]  # output channels of the last conv
    zero = _tensor("zero_scalar", np.array(0.0, dtype=np.float32))

    # 1. every cell replaced by the global mean of the real cells
    models["global-mean"] = _after_output(fresh(), [
        helper.make_node("ReduceMean", ["raw_logits", "mean_axes"], ["cell_mean"], name="lie_mean",
                         keepdims=1),
        helper.make_node("Mul", ["raw_logits", "zero_scalar"], ["zeros_like"], name="lie_zero"),
        helper.make_node("Add", ["zeros_like", "cell_mean"], [probe.graph.output[0].name],
                         name="lie_broadcast"),
    ], [_tensor("mean_axes", np.array([1, 2], dtype=np.int64)), zero])

    # 2. a padded 5x5 max-pool after the real cells (true receptive field 9)
    models["padded-maxpool"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("MaxPool", [x], [y], name="lie_pool", kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
    ], []))

    # 3. every cell depending on the brightest pixel of the image
    models["brightest-pixel"] = _after_output(fresh(), [
        helper.make_node("ReduceMax", ["input", "bright_axes"], ["brightest"], name="lie_bright",
                         keepdims=1),
        helper.make_node("Reshape", ["brightest", "bright_shape"], ["brightest_b"], name="lie_shape"),
        helper.make_node("Add", ["raw_logits", "brightest_b"], [probe.graph.output[0].name],
                         name="lie_add_bright"),
    ], [_tensor("bright_axes", np.array([1, 2, 3], dtype=np.int64)),
        _tensor("bright_shape", np.array([-1, 1, 1, 1], dtype=np.int64))])

    # 4. a 1x1 conv after a global pool, added back to every cell
    weight = _tensor("gap_weight", np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1))
    models["global-pool-conv"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="lie_gap"),
        helper.make_node("Conv", ["gap", "gap_weight"], ["gap_conv"], name="lie_gap_conv",
                         kernel_shape=[1, 1]),
        helper.make_node("Add", [x, "gap_conv"], [y], name="lie_gap_add"),
    ], [weight]))

    # 5. a padded 3x3 conv stack whose map size still fits
    ident = np.zeros((channels, channels, 3, 3), dtype=np.float32)
    ident[np.arange(channels), np.arange(channels), 1, 1] = 1.0
    ident[np.arange(channels), np.arange(channels), 0, 0] = 0.01
    models["padded-conv-stack"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("Conv", [x, "pad_w"], ["padded_1"], name="lie_padded_1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["padded_1", "pad_w"], [y], name="lie_padded_2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ], [_tensor("pad_w", ident)]))

    # 6. a Resize (scale 1: the same size, but the op resamples across cells)
    models["resize"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("Resize", [x, "", "resize_scales"], [y], name="lie_resize", mode="linear"),
    ], [_tensor("resize_scales", np.array([1, 1, 1, 1], dtype=np.float32))]))

    # 7. a Reshape across cells: the map read back with its rows and columns swapped
    models["reshape-across-cells"] = _after_output(fresh(), [
        helper.make_node("Transpose", ["raw_logits"], ["swapped"], name="lie_swap", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["swapped", "same_shape"], [probe.graph.output[0].name],
                         name="lie_reshape"),
    ], [_tensor("same_shape", np.array([-1, 24, 24, 10], dtype=np.int64))])

    # 8. an unknown custom op
    models["custom-op"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("LocalLookingOp", [x], [y], name="lie_custom", domain="com.example"),
    ], []))

    # 9. reflect padding (copies pixels across positions), then a crop back to size
    models["reflect-pad"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("Pad", [x, "reflect_pads"], ["reflected"], name="lie_reflect", mode="reflect"),
        helper.make_node("Slice", ["reflected", "crop_starts", "crop_ends", "crop_axes"], [y],
                         name="lie_crop"),
    ], [_tensor("reflect_pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)),
        _tensor("crop_starts", np.array([0, 0], dtype=np.int64)),
        _tensor("crop_ends", np.array([24, 24], dtype=np.int64)),
        _tensor("crop_axes", np.array([2, 3], dtype=np.int64))]))

    # 10. a softmax over the rows of the map
    models["softmax-over-rows"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("Softmax", [x], [y], name="lie_softmax", axis=2),
    ], []))

    # 11. MatMul across positions: columns mixed by a constant 24x24 matrix
    mix = np.eye(24, dtype=np.float32)
    mix[0, 23] = 0.5
    models["matmul-across-columns"] = _before_transpose(fresh(), lambda x, y: ([
        helper.make_node("MatMul", [x, "column_mix"], [y], name="lie_matmul"),
    ], [_tensor("column_mix", mix)]))
    return models


def save_lying_models(bundled: Path, folder: Path) -> dict:
    """Write every lying model next to each other: {name: path}."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, model in build_lying_models(bundled).items():
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        paths[name] = path
    return paths
