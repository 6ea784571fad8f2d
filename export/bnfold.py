"""Fold BatchNormalization into the convolution before it (an ONNX -> ONNX step).

At inference a BatchNormalization after a convolution is an affine map per
output channel, so it folds into the convolution's weights and bias:

    s  = gamma / sqrt(var + epsilon)
    W' = W * s   (per output channel)
    b' = (b - mean) * s + beta

Why at export: TensorRT 10.3 (JetPack 6.1/6.2) predates the parser's support
for BatchNormalization in strongly typed mixed-precision networks (added in
onnx-tensorrt 10.7), so an fp16 graph that keeps one may not parse there; the
folded graph is also one layer shorter per block. torch's exporters already
fold in eval mode; this step makes it a property of every graph the export
chain hands on (fp16 and int8 are made from it, engines are built from it),
whichever exporter or tool wrote the file.

Only the pattern that is exactly affine is folded: a Conv whose weights (and
bias) are initializers, whose output feeds nothing but one inference-mode
BatchNormalization with initializer statistics. Anything else is left as it
was; :func:`batchnorm_count` tells the caller what remains. The arithmetic is
done in float64 and stored in the weights' own dtype (fp32 or fp16). Torch-free.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import numpy as np

from ..runtime.errors import lazy_import

BN_OP = "BatchNormalization"


def batchnorm_count(model: Any) -> int:
    """BatchNormalization nodes in the main graph of ``model`` (an ``onnx.ModelProto``)."""
    return sum(node.op_type == BN_OP for node in model.graph.node)


def _attribute(node: Any, name: str, default: Any) -> Any:
    onnx = lazy_import("onnx", "onnx")
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _fold_one(conv: Any, bn: Any, arrays: dict[str, np.ndarray]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """New (weights, bias) of ``conv`` with ``bn`` folded in, or None when it does not fold exactly."""
    if _attribute(bn, "training_mode", 0) or (len(bn.output) > 1 and any(bn.output[1:])):
        return None  # training-mode statistics are computed from the batch: not affine
    names = list(bn.input[1:5])
    if len(names) != 4 or any(n not in arrays for n in names) or conv.input[1] not in arrays:
        return None
    weight = arrays[conv.input[1]]
    bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    if bias_name is not None and bias_name not in arrays:
        return None
    gamma, beta, mean, var = (arrays[n].astype(np.float64) for n in names)
    channels = weight.shape[0]
    if weight.ndim < 3 or any(a.shape != (channels,) for a in (gamma, beta, mean, var)):
        return None
    scale = gamma / np.sqrt(var + float(_attribute(bn, "epsilon", 1e-5)))
    bias = arrays[bias_name].astype(np.float64) if bias_name else np.zeros(channels)
    new_weight = weight.astype(np.float64) * scale.reshape((channels,) + (1,) * (weight.ndim - 1))
    new_bias = (bias - mean) * scale + beta
    return new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)


def fold_batchnorm(model: Any) -> Any:
    """Fold every Conv -> BatchNormalization pair of ``model``; returns ``model``, changed in place.

    The folded Conv takes over the BatchNormalization's output name, so the
    graph's inputs, outputs and metadata are unchanged. Weights shared with
    another node are copied, never changed under that node.
    """
    onnx = lazy_import("onnx", "onnx")
    graph = model.graph
    if not any(node.op_type == BN_OP for node in graph.node):
        return model
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    consumers = Counter(name for node in graph.node for name in node.input if name)
    graph_outputs = {out.name for out in graph.output}
    producer = {out: node for node in graph.node for out in node.output}
    dropped: set[int] = set()
    new_inits = []
    for index, bn in enumerate(graph.node):
        if bn.op_type != BN_OP:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers[bn.input[0]] != 1 \
                or bn.input[0] in graph_outputs:
            continue
        folded = _fold_one(conv, bn, arrays)
        if folded is None:
            continue
        weight, bias = folded
        stem = f"{conv.name or conv.output[0]}.bnfold"
        w_name, b_name = f"{stem}.weight", f"{stem}.bias"
        new_inits += [onnx.numpy_helper.from_array(weight, w_name),
                      onnx.numpy_helper.from_array(bias, b_name)]
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = bn.output[0]
        dropped.add(index)
    kept = [node for index, node in enumerate(graph.node) if index not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    return model


def _drop_unused_initializers(graph: Any) -> None:
    """Remove initializers no node reads any more (the folded-away weights and statistics)."""
    used = {name for node in graph.node for name in node.input}
    used |= {out.name for out in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    removed = {init.name for init in graph.initializer} - {init.name for init in kept}
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Old graphs list initializers among the inputs too; drop the removed ones' entries, nothing else.
    inputs = [value for value in graph.input if value.name not in removed]
    del graph.input[:]
    graph.input.extend(inputs)
