"""Static proof that an ONNX model's outputs are local (docs/architecture.md).

A certificate is a theorem about a model whose output cell (i, j) sees only
the pixels of its receptive field. This module proves that premise from the
graph itself, node by node, from each node's own attributes, without running
the model and without torch; the metadata a file carries is never believed.

Per spatial axis every tensor on the path from the image to the local logits
carries a field ``(r, j, lo, n)``: cell i depends on input pixels
``lo + i j .. lo + i j + r - 1`` at most (pixels outside the image are
padding), j is the jump (stride) and n the number of cells. The image starts
at ``(1, 1, 0, size)``; then

- Conv / MaxPool / AveragePool / LpPool (kernel k, stride t, dilation d,
  begin padding p, ``auto_pad``, ``ceil_mode``): ``r + (k - 1) d j``,
  ``j t``, ``lo - p j``; padding shifts the offset, it never widens a field;
- pointwise and per-channel ops (Relu, Clip, BatchNormalization, Cast, QDQ,
  Add/Mul/Sub/Div with constants, ...): unchanged;
- residual Add / Concat over channels of two maps: the union of the fields
  (equal jumps required);
- Slice / Pad (constant mode) on a spatial axis: crop or shift the cells;
- Transpose, and MatMul / Softmax / Reduce* over the channel axis: move or
  mix channels only.

Anything that could mix positions (global pooling, Reduce or Softmax over a
spatial axis, Flatten, Reshape, Gemm, MatMul across positions, Resize, Pad
with a non-constant mode, Gather, attention, control flow, an op or a domain
this module does not know) ends the proof with an error naming the node and
its op. The output must be (B, H, W, C) with H, W the spatial axes.

:func:`prove` returns the model's **proved** geometry; :func:`check_proof_fits_record`
says whether it lies inside the geometry the certificate uses (the record's
r and s: same stride, every cell's real pixels inside ``[i s, i s + r)``,
which is the footprint :mod:`.footprint` assumes); :func:`verify` does both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, PatchGuardError
from .files import PathText, sha256_file
from .geometry import Pair
from .metadata import ModelRecord

# Roles of tensor axes.
BATCH, CHANNEL, ROWS, COLS = "batch", "channel", "rows", "cols"
_SPATIAL = (ROWS, COLS)

_UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Cast", "CastLike", "Identity", "Abs", "Neg", "Exp",
    "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Gelu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Elu", "Selu", "Celu", "Mish", "Sign", "ThresholdedRelu",
    "Dropout", "Clip", "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "PRelu",
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}


class VerificationError(PatchGuardError):
    """The graph does not prove that its outputs are local."""


@dataclass(frozen=True)
class Field:
    """One spatial axis: cell i sees pixels ``lo + i jump .. lo + i jump + r - 1``."""

    r: int
    jump: int
    lo: int
    cells: int

    def union(self, other: Field) -> Field:
        lo = min(self.lo, other.lo)
        return Field(max(self.lo + self.r, other.lo + other.r) - lo, self.jump, lo, self.cells)


@dataclass(frozen=True)
class AxisProof:
    """Proved geometry of one axis: receptive field r, stride, offset of cell 0, cells."""

    receptive_field: int
    stride: int
    offset: int
    cells: int


@dataclass(frozen=True)
class ProvedGeometry:
    """What the graph proves about its (B, H, W, C) output, per axis."""

    rows: AxisProof
    cols: AxisProof
    input_size: Pair

    def to_dict(self) -> dict[str, Any]:
        return {
            "receptive_field": [self.rows.receptive_field, self.cols.receptive_field],
            "stride": [self.rows.stride, self.cols.stride],
            "offset": [self.rows.offset, self.cols.offset],
            "map_size": [self.rows.cells, self.cols.cells],
            "input_size": list(self.input_size),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ProvedGeometry:
        try:
            axes = [AxisProof(int(data["receptive_field"][k]), int(data["stride"][k]),
                              int(data["offset"][k]), int(data["map_size"][k])) for k in (0, 1)]
            size = (int(data["input_size"][0]), int(data["input_size"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise PatchGuardError(f"proved geometry is malformed: {data!r}") from None
        return cls(axes[0], axes[1], size)

    def describe(self) -> str:
        r, c = self.rows, self.cols
        return (f"r={r.receptive_field}x{c.receptive_field}, s={r.stride}x{c.stride}, "
                f"offset={r.offset},{c.offset}, map {r.cells}x{c.cells}")


@dataclass
class _Map:
    """A tensor that depends on the image: the role of each axis and a field per spatial axis."""

    roles: list[str]
    fields: dict[str, Field]


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "proving a model's locality needs the onnx package: pip install "
            "'patchguard-edge[cpu]' (on a Jetson, where onnxruntime comes from JetPack: "
            "pip install 'patchguard-edge[onnx]')"
        ) from None
    return onnx


def onnx_digest(path: PathText) -> str:
    """SHA-256 (hex) of an ONNX file's bytes: what an engine sidecar records."""
    return sha256_file(path)


def load_graph(model: Any) -> Any:
    """An ``onnx.ModelProto`` from a proto, a path or serialized bytes (weights not needed)."""
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    try:
        return onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise PatchGuardError(f"cannot read ONNX model {model}: {exc}") from None


# --------------------------------------------------------------------------
# The walk.

class _Prover:
    def __init__(self, model: Any, input_size: Pair | None) -> None:
        onnx = _onnx()
        self.numpy_helper = onnx.numpy_helper
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        # name -> TensorProto (read on demand), numpy value, or None when unknown
        self.consts: dict[str, Any] = {init.name: init for init in self.graph.initializer}
        self.ranks: dict[str, int] = {}  # ranks of constants whose values are not kept
        self.maps: dict[str, _Map] = {}
        init_names = set(self.consts)
        inputs = [i for i in self.graph.input if i.name not in init_names]
        if len(inputs) != 1:
            raise VerificationError(
                f"the model must have exactly one image input, found {len(inputs)}"
            )
        image = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in image.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise VerificationError(f"the image input {image.name!r} must be NCHW, has rank {len(dims)}")
        size = (dims[2], dims[3])
        if input_size is not None:
            if any(d is not None and d != want for d, want in zip(size, input_size)):
                raise VerificationError(
                    f"the image input is {size[0]}x{size[1]} but the record says "
                    f"{input_size[0]}x{input_size[1]}"
                )
            size = (int(input_size[0]), int(input_size[1]))
        if size[0] is None or size[1] is None:
            raise VerificationError("the image input has no fixed height and width (give input_size)")
        self.input_size: Pair = (int(size[0]), int(size[1]))
        self.maps[image.name] = _Map([BATCH, CHANNEL, ROWS, COLS], {
            ROWS: Field(1, 1, 0, self.input_size[0]), COLS: Field(1, 1, 0, self.input_size[1])})

    def value(self, name: str) -> Any:
        """The numpy value of a constant, or None when unknown (e.g. external data)."""
        value = self.consts.get(name)
        if value is not None and not hasattr(value, "ndim"):
            try:
                value = self.numpy_helper.to_array(value)
            except Exception:  # external data not loaded: the tensor is constant, its values unknown
                value = None
            self.consts[name] = value
        return value

    def rank(self, name: str) -> int | None:
        value = self.consts.get(name)
        if value is None:
            return self.ranks.get(name)
        return value.ndim if hasattr(value, "ndim") else len(value.dims)

    def shape(self, name: str) -> list[int] | None:
        """A constant's shape when known (an initializer's dims, a folded value's shape)."""
        value = self.consts.get(name)
        if value is None:
            return None
        return list(value.shape) if hasattr(value, "shape") else [int(d) for d in value.dims]

    # -- helpers
    def fail(self, node: Any, why: str) -> VerificationError:
        name = node.name or (node.output[0] if node.output else "?")
        return VerificationError(f"node {name!r} ({node.op_type}) {why}")

    def const_value(self, node: Any, name: str, what: str) -> Any:
        value = self.value(name) if name in self.consts else None
        if value is None:
            raise self.fail(node, f"needs a constant {what}")
        return value

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        onnx = _onnx()
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    # -- main loop
    def run(self) -> ProvedGeometry:
        for node in self.graph.node:
            self.visit(node)
        out = self.graph.output[0].name
        if out not in self.maps:
            raise VerificationError(f"the output {out!r} does not depend on the image")
        result = self.maps[out]
        if result.roles != [BATCH, ROWS, COLS, CHANNEL]:
            raise VerificationError(
                f"the output {out!r} must be local logits (B, H, W, C); its axes are {result.roles}"
            )
        axes = [AxisProof(f.r, f.jump, f.lo, f.cells) for f in (result.fields[ROWS], result.fields[COLS])]
        return ProvedGeometry(axes[0], axes[1], self.input_size)

    def visit(self, node: Any) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(node, f"is from domain {node.domain!r}, which this proof does not know")
        inputs = [i for i in node.input if i]
        if any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS: control flow
            raise self.fail(node, "holds a subgraph; control flow is not proved")
        if node.op_type == "Constant":
            self._constant(node)
            return
        mapped = [i for i in inputs if i in self.maps]
        unknown = [i for i in inputs if i not in self.maps and i not in self.consts]
        if unknown:
            raise self.fail(node, f"reads {unknown[0]!r}, which the proof cannot follow")
        if not mapped:  # constants only (weights, shapes): constant out
            self._fold(node)
            return
        handler = getattr(self, "_op_" + node.op_type, None)
        if handler is not None:
            out = handler(node, mapped)
        elif node.op_type in _UNARY:
            out = self._pointwise(node, mapped)
        elif node.op_type in _BINARY:
            out = self._elementwise(node, mapped)
        elif node.op_type in _POOLS:
            out = self._window(node, self.maps[node.input[0]], pool=True)
        elif node.op_type in _REDUCE:
            out = self._reduce(node)
        elif node.op_type in _SOFTMAX:
            out = self._softmax(node)
        else:
            raise self.fail(node, "may mix positions (an op this proof does not know)")
        self.maps[node.output[0]] = out
        for extra in node.output[1:]:
            if extra:
                self.consts.pop(extra, None)  # e.g. MaxPool indices: left unknown

    def _constant(self, node: Any) -> None:
        onnx = _onnx()
        value = None
        for a in node.attribute:
            if a.name == "value":
                value = self.numpy_helper.to_array(onnx.helper.get_attribute_value(a))
            elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                import numpy as np
                value = np.array(onnx.helper.get_attribute_value(a))
        self.consts[node.output[0]] = value

    def _fold(self, node: Any) -> None:
        """Outputs of a node that reads no map: constant (values kept where trivial)."""
        value = None
        if node.op_type in ("Identity",) and node.input:
            value = self.consts.get(node.input[0])
        for out in node.output:
            if out:
                self.consts[out] = value
        if (node.op_type in _UNARY or node.op_type == "Transpose") and node.output[0]:
            rank = self.rank(node.input[0])  # same rank (a transposed weight, a DQ'd one)
            if rank is not None:
                self.ranks[node.output[0]] = rank

    # -- position-preserving ops
    def _pointwise(self, node: Any, mapped: list[str]) -> _Map:
        if len(mapped) != 1 or node.input[0] != mapped[0]:
            raise self.fail(node, "takes the image path as a parameter")
        if node.op_type == "BatchNormalization" and self.attr(node, "training_mode", 0):
            raise self.fail(node, "normalises over positions (training mode)")
        source = self.maps[mapped[0]]
        return _Map(list(source.roles), dict(source.fields))

    def _elementwise(self, node: Any, mapped: list[str]) -> _Map:
        maps = [self.maps[name] for name in mapped]
        rank = max(len(m.roles) for m in maps)
        for name in node.input:
            if name and name not in self.maps:
                const_rank = self.rank(name)
                if const_rank is not None and const_rank > rank:
                    raise self.fail(node, "broadcasts a constant of higher rank")
                shape = self.shape(name)
                if shape is not None:
                    # Right-aligned broadcasting: a constant longer than a map's spatial
                    # axis would copy its cells to positions the proof never counted.
                    for dim, role in zip(reversed(shape), reversed(maps[0].roles)):
                        if role in _SPATIAL and dim not in (1, maps[0].fields[role].cells):
                            raise self.fail(node, f"broadcasts a constant of {dim} along {role} "
                                                  f"onto {maps[0].fields[role].cells} cells")
        first = maps[0]
        if any(m.roles != first.roles for m in maps[1:]):
            raise self.fail(node, "combines maps whose axes differ")
        fields = dict(first.fields)
        for other in maps[1:]:
            for axis in _SPATIAL:
                a, b = fields[axis], other.fields[axis]
                if a.jump != b.jump or a.cells != b.cells:
                    raise self.fail(node, f"combines maps of different strides or sizes along {axis}")
                fields[axis] = a.union(b)
        return _Map(list(first.roles), fields)

    def _op_Concat(self, node: Any, mapped: list[str]) -> _Map:
        maps = [self.maps[name] for name in mapped]
        roles = maps[0].roles
        axis = self.attr(node, "axis") % len(roles)
        if roles[axis] != CHANNEL:
            raise self.fail(node, f"concatenates along the {roles[axis]} axis")
        return self._elementwise(node, mapped)

    def _op_Transpose(self, node: Any, mapped: list[str]) -> _Map:
        source = self.maps[mapped[0]]
        perm = self.attr(node, "perm") or list(reversed(range(len(source.roles))))
        return _Map([source.roles[p] for p in perm], dict(source.fields))

    def _op_MatMul(self, node: Any, mapped: list[str]) -> _Map:
        if len(mapped) != 1 or node.input[0] != mapped[0]:
            raise self.fail(node, "multiplies along the image's positions")
        source = self.maps[mapped[0]]
        if node.input[1] not in self.consts:
            raise self.fail(node, "needs a constant weight")
        if source.roles[-1] != CHANNEL or self.rank(node.input[1]) != 2:
            raise self.fail(node, f"contracts the {source.roles[-1]} axis (mixes positions)")
        return _Map(list(source.roles), dict(source.fields))

    def _reduce(self, node: Any) -> _Map:
        source = self.maps[node.input[0]]
        axes = self.attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self.const_value(node, node.input[1], "axes")]
        if not axes:
            raise self.fail(node, "reduces over every axis (mixes positions)")
        axes = sorted({int(a) % len(source.roles) for a in axes})
        if any(source.roles[a] != CHANNEL for a in axes):
            raise self.fail(node, "reduces over positions")
        roles = list(source.roles)
        if not self.attr(node, "keepdims", 1):
            roles = [r for k, r in enumerate(roles) if k not in axes]
        return _Map(roles, dict(source.fields))

    def _softmax(self, node: Any) -> _Map:
        source = self.maps[node.input[0]]
        rank = len(source.roles)
        axis = self.attr(node, "axis", -1 if self.opset >= 13 else 1) % rank
        # Before opset 13 Softmax flattens every axis from `axis` on into one.
        covered = [axis] if self.opset >= 13 else list(range(axis, rank))
        if any(source.roles[a] != CHANNEL for a in covered):
            raise self.fail(node, "normalises over positions")
        return _Map(list(source.roles), dict(source.fields))

    # -- spatial ops
    def _op_Conv(self, node: Any, mapped: list[str]) -> _Map:
        if node.input[0] not in self.maps or len(mapped) != 1:
            raise self.fail(node, "takes its weights from the image path")
        return self._window(node, self.maps[node.input[0]], pool=False)

    def _window(self, node: Any, source: _Map, pool: bool) -> _Map:
        if source.roles != [BATCH, CHANNEL, ROWS, COLS]:
            raise self.fail(node, f"needs NCHW input, its axes are {source.roles}")
        kernel = self.attr(node, "kernel_shape")
        if kernel is None and not pool:
            weight = self.value(node.input[1]) if node.input[1] in self.consts else None
            if weight is None:
                raise self.fail(node, "has no kernel_shape and no readable weight")
            kernel = list(weight.shape[2:])
        if kernel is None or len(kernel) != 2:
            raise self.fail(node, f"has a kernel of {kernel}, not 2-D")
        if not pool and node.input[1] in self.consts:
            weight = self.value(node.input[1])
            if weight is not None and list(weight.shape[2:]) != [int(k) for k in kernel]:
                # The proof must reason about the kernel a runtime actually applies.
                raise self.fail(node, f"has kernel_shape {list(kernel)} but weights of {list(weight.shape[2:])}")
        strides = self.attr(node, "strides") or [1, 1]
        dilations = self.attr(node, "dilations") or [1, 1]
        pads = self.attr(node, "pads") or [0, 0, 0, 0]
        auto_pad = self.attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        ceil_mode = bool(self.attr(node, "ceil_mode", 0))
        fields = dict(source.fields)
        for k, axis in enumerate(_SPATIAL):
            f = source.fields[axis]
            size, stride, dil = int(kernel[k]), int(strides[k]), int(dilations[k])
            if size < 1 or stride < 1 or dil < 1:
                raise self.fail(node, f"has kernel {size}, stride {stride}, dilation {dil}")
            begin, end = int(pads[k]), int(pads[k + 2])
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                if dil > 1:  # runtimes disagree on where these pads go (onnxruntime ignores dil)
                    raise self.fail(node, "combines auto_pad SAME with dilation; give explicit pads")
                total = max(0, (math.ceil(f.cells / stride) - 1) * stride + dil * (size - 1) + 1 - f.cells)
                begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                end = total - begin
            elif auto_pad == "VALID":
                begin = end = 0
            elif auto_pad != "NOTSET":
                raise self.fail(node, f"has auto_pad {auto_pad!r}")
            if begin < 0 or end < 0:
                raise self.fail(node, "has negative padding")
            span = f.cells + begin + end - dil * (size - 1) - 1
            if span < 0:
                raise self.fail(node, f"has a kernel larger than its {f.cells}-cell input")
            cells = (-(-span // stride) if ceil_mode else span // stride) + 1
            if ceil_mode and (cells - 1) * stride >= f.cells + begin:
                cells -= 1  # ONNX drops a last window that starts in the end padding
            fields[axis] = Field(f.r + (size - 1) * dil * f.jump, f.jump * stride,
                                 f.lo - begin * f.jump, cells)
        return _Map(list(source.roles), fields)

    def _op_Slice(self, node: Any, mapped: list[str]) -> _Map:
        import numpy as np
        if node.input[0] != mapped[0] or len(mapped) != 1:
            raise self.fail(node, "takes its bounds from the image path")
        source = self.maps[mapped[0]]
        if self.opset < 10:
            starts, ends = self.attr(node, "starts"), self.attr(node, "ends")
            axes, steps = self.attr(node, "axes"), None
        else:
            starts = self.const_value(node, node.input[1], "starts")
            ends = self.const_value(node, node.input[2], "ends")
            axes = (self.const_value(node, node.input[3], "axes")
                    if len(node.input) > 3 and node.input[3] else None)
            steps = (self.const_value(node, node.input[4], "steps")
                     if len(node.input) > 4 and node.input[4] else None)
        starts, ends = np.asarray(starts).tolist(), np.asarray(ends).tolist()
        axes = list(range(len(starts))) if axes is None else np.asarray(axes).tolist()
        steps = [1] * len(starts) if steps is None else np.asarray(steps).tolist()
        fields = dict(source.fields)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            role = source.roles[int(axis) % len(source.roles)]
            if role == BATCH and not (int(start) == 0 and int(end) >= 2 ** 31 - 1 and step == 1):
                # One frame's slice broadcast onto the others would let a patch
                # in one frame reach another frame's cells.
                raise self.fail(node, "slices the batch axis (mixes frames)")
            if role not in _SPATIAL:
                continue
            if step < 1:
                raise self.fail(node, f"reverses or steps by {step} along {role}")
            f = fields[role]
            first, stop, _ = slice(int(start), int(end), int(step)).indices(f.cells)
            cells = max(0, -(-(stop - first) // step))
            if cells == 0:
                raise self.fail(node, f"leaves no cell along {role}")
            fields[role] = Field(f.r, f.jump * step, f.lo + first * f.jump, cells)
        return _Map(list(source.roles), fields)

    def _op_Pad(self, node: Any, mapped: list[str]) -> _Map:
        import numpy as np
        if node.input[0] != mapped[0] or len(mapped) != 1:
            raise self.fail(node, "takes its padding from the image path")
        mode = self.attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            raise self.fail(node, f"pads in {mode!r} mode (copies pixels across positions)")
        source = self.maps[mapped[0]]
        rank = len(source.roles)
        if self.opset < 11:
            pads = self.attr(node, "pads")
            axes = list(range(rank))
        else:
            pads = np.asarray(self.const_value(node, node.input[1], "pads")).tolist()
            axes = (np.asarray(self.const_value(node, node.input[3], "axes")).tolist()
                    if len(node.input) > 3 and node.input[3] else list(range(rank)))
        count = len(axes)
        fields = dict(source.fields)
        for k, axis in enumerate(axes):
            role = source.roles[int(axis) % rank]
            begin, end = int(pads[k]), int(pads[k + count])
            if role not in _SPATIAL:
                if (begin or end) and role == BATCH:
                    raise self.fail(node, "pads the batch axis")
                continue
            if begin < 0 or end < 0:
                raise self.fail(node, "crops by negative padding")
            f = fields[role]
            fields[role] = Field(f.r, f.jump, f.lo - begin * f.jump, f.cells + begin + end)
        return _Map(list(source.roles), fields)

    def _op_Squeeze(self, node: Any, mapped: list[str]) -> _Map:
        return self._squeeze(node, mapped, add=False)

    def _op_Unsqueeze(self, node: Any, mapped: list[str]) -> _Map:
        return self._squeeze(node, mapped, add=True)

    def _squeeze(self, node: Any, mapped: list[str], add: bool) -> _Map:
        source = self.maps[mapped[0]]
        axes = self.attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self.const_value(node, node.input[1], "axes")]
        if not axes:
            raise self.fail(node, "has no explicit axes")
        roles = list(source.roles)
        if add:
            rank = len(roles) + len(axes)
            for a in sorted(int(a) % rank for a in axes):
                roles.insert(a, "other")
        else:
            drop = {int(a) % len(roles) for a in axes}
            if any(roles[a] in _SPATIAL + (BATCH,) for a in drop):
                raise self.fail(node, "removes a spatial or batch axis")
            roles = [r for k, r in enumerate(roles) if k not in drop]
        return _Map(roles, dict(source.fields))


def prove(model: Any, input_size: Pair | None = None) -> ProvedGeometry:
    """The geometry an ONNX model's graph proves for its local-logit output.

    ``model`` is an ``onnx.ModelProto``, a path or serialized bytes;
    ``input_size`` (H, W) fixes the image size when the graph leaves it
    open. Raises :class:`VerificationError` naming the first node that could
    mix positions.
    """
    return _Prover(load_graph(model), input_size).run()


def check_proof_fits_record(proof: ProvedGeometry, record: ModelRecord) -> None:
    """Refuse a proof that does not fit inside the record's r and s.

    Same stride, the record's map size, and every cell i's real pixels (its
    field clipped to the image) inside ``[i s, i s + r - 1]``: the footprint
    the certificate assumes. The certificate then uses the record, never
    anything wider than proved.
    """
    r, s = record.receptive_field, record.stride
    want = record.map_size
    for k, (axis, name) in enumerate(((proof.rows, "rows"), (proof.cols, "columns"))):
        size = proof.input_size[k]
        if axis.stride != s:
            raise VerificationError(
                f"the graph proves stride {axis.stride} along {name}, the record says {s}")
        if axis.cells != want[k]:
            raise VerificationError(
                f"the graph gives {axis.cells} cells along {name}, the record's r={r}, s={s} "
                f"give {want[k]}")
        for i in range(axis.cells):
            lo = max(0, axis.offset + i * axis.stride)
            hi = min(size - 1, axis.offset + i * axis.stride + axis.receptive_field - 1)
            if lo < i * s or hi > i * s + r - 1:
                raise VerificationError(
                    f"cell {i} along {name} sees pixels {lo}..{hi} (proved r={axis.receptive_field}, "
                    f"offset {axis.offset}), outside the record's {i * s}..{i * s + r - 1} (r={r})")


def verify(model: Any, record: ModelRecord) -> ProvedGeometry:
    """:func:`prove` the graph at the record's input size, then :func:`check_proof_fits_record`."""
    proof = prove(model, record.input_size)
    check_proof_fits_record(proof, record)
    return proof


def engine_proof(digest: str, proved: dict[str, Any] | None, record: ModelRecord,
                 onnx: PathText | None = None) -> ProvedGeometry:
    """The locality a TensorRT engine (which cannot be read back) is trusted with.

    ``digest`` and ``proved`` come from its sidecar: the SHA-256 of the ONNX
    file ``pg-export`` built it from and the geometry that file's graph
    proved. Both must be there, and the geometry must fit the record. With
    ``onnx`` (the file it was built from) the digest must match and the graph
    is proved again here.
    """
    if not digest or not proved:
        raise VerificationError(
            "its sidecar holds no ONNX digest and proved geometry (an engine from an older "
            "pg-export, or not from pg-export): rebuild it with pg-export --onnx MODEL.onnx")
    proof = ProvedGeometry.from_dict(proved)
    check_proof_fits_record(proof, record)
    if onnx is not None:
        found = onnx_digest(onnx)
        if found != digest:
            raise VerificationError(
                f"{Path(onnx).name} is not the ONNX it was built from (SHA-256 {found[:16]}..., "
                f"the sidecar says {digest[:16]}...)")
        proof = verify(onnx, record)
    return proof
