"""Locality probe: check that an exported model is the BagNet its record says.

Certificates are sound only if every local-logit cell (i, j) sees exactly its
r x r receptive field, rows ``i*s .. i*s + r - 1`` and columns likewise. The
probe runs the exported ONNX in onnxruntime (torch-free) and checks:

1. the map is ``floor((input - r) / s) + 1`` cells per axis;
2. changing a small block of input pixels changes no cell whose receptive
   field misses the block (a padded convolution, global pooling or attention
   leaks information and fails here).

A model that contradicts its record raises :class:`LocalityError`, so the
exporter never writes metadata the model contradicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.backends.onnxrt import load_session
from ..runtime.errors import PatchGuardError, first_line
from ..runtime.files import PathText
from ..runtime.geometry import touched_cells
from ..runtime.metadata import ModelRecord

# Changes below this fraction of the logit scale are float32 rounding (e.g.
# tiled convolution algorithms), not information flow.
RELATIVE_TOLERANCE = 1e-4


class LocalityError(PatchGuardError):
    """The exported model contradicts the receptive field / stride of its record."""


@dataclass(frozen=True)
class ProbeReport:
    map_size: tuple[int, int]
    blocks: int
    block_px: int
    max_change_outside: float
    max_change_inside: float
    tolerance: float


def _block_corners(height: int, width: int, block: int, stride: int, count: int,
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Corners and centre (where padding shows), random positions, then a stride sweep.

    Away from the borders a cell's dependence on a pixel depends only on their
    offset modulo s (the network is equivariant to shifts by s), so blocks
    stepping from the centre through every pixel offset modulo s on both axes
    reveal a receptive field wider than r or shifted from the claimed one,
    which random positions find only by luck (e.g. one padded stem conv).
    The sweep steps one pixel, not one block, so that every offset is both a
    block's first and its last pixel (a leak just left of a field shows only
    with a block that ends there).
    """
    cy, cx = (height - block) // 2, (width - block) // 2
    fixed = [(0, 0), (0, width - block), (height - block, 0), (height - block, width - block),
             (cy, cx)]
    extra = [(int(rng.integers(0, height - block + 1)), int(rng.integers(0, width - block + 1)))
             for _ in range(max(0, count - len(fixed)))]
    sweep = [(min(cy + k, height - block), min(cx + k, width - block)) for k in range(1, stride)]
    return (fixed + extra)[:max(count, 1)] + sweep


def probe_locality(
    onnx_path: PathText,
    record: ModelRecord,
    blocks: int = 7,
    block_px: int = 2,
    seed: int = 0,
) -> ProbeReport:
    """Probe ``onnx_path`` against ``record``; raise :class:`LocalityError` on a contradiction."""
    session = load_session(Path(onnx_path), "CPUExecutionProvider")
    input_name = session.get_inputs()[0].name
    height, width = record.input_size
    r, s = record.receptive_field, record.stride
    rows, cols = record.map_size
    block = max(1, min(block_px, height, width))
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((1, record.in_channels, height, width)).astype(np.float32)
    corners = _block_corners(height, width, block, s, blocks, rng)
    batch = np.repeat(base, len(corners) + 1, axis=0)
    for k, (y, x) in enumerate(corners, start=1):
        # A large change in normalised units, different per channel.
        batch[k, :, y:y + block, x:x + block] += rng.choice([-4.0, 4.0], size=(record.in_channels, 1, 1))
    try:
        out = session.run(None, {input_name: batch})[0]
    except Exception as exc:
        raise LocalityError(f"probe could not run the model on {batch.shape} inputs: {first_line(exc)}") from None
    got = tuple(out.shape[1:3]) if out.ndim == 4 else tuple(out.shape)
    if out.ndim != 4 or got != (rows, cols) or out.shape[3] != record.num_classes:
        raise LocalityError(
            f"model gives a {'x'.join(map(str, out.shape[1:]))} output at {height}x{width} input, but "
            f"r={r}, s={s} needs floor((input - r) / s) + 1 = {rows}x{cols} cells x "
            f"{record.num_classes} classes; it is not the BagNet its metadata claims"
        )
    reference = out[0]
    tolerance = RELATIVE_TOLERANCE * max(float(np.abs(reference).max()), 1e-6)
    outside_max, inside_max = 0.0, 0.0
    for k, (y, x) in enumerate(corners, start=1):
        change = np.abs(out[k] - reference).max(axis=-1)  # (rows, cols)
        allowed = np.zeros_like(change, dtype=bool)
        allowed[touched_cells(y, y + block, r, s, rows), touched_cells(x, x + block, r, s, cols)] = True
        outside = float(change[~allowed].max()) if (~allowed).any() else 0.0
        inside_max = max(inside_max, float(change[allowed].max()) if allowed.any() else 0.0)
        outside_max = max(outside_max, outside)
        if outside > tolerance:
            i, j = np.unravel_index(np.argmax(np.where(allowed, 0.0, change)), change.shape)
            raise LocalityError(
                f"changing pixels [{y}:{y + block}, {x}:{x + block}] changed cell ({i}, {j}) by "
                f"{outside:.3g}, outside the receptive field r={r}, s={s} claims; the model sees "
                "beyond its patches (padding or global pooling?) and cannot be certified as a BagNet"
            )
    if inside_max <= tolerance:
        raise LocalityError("probe saw no effect of any input change on the logits; cannot check locality")
    return ProbeReport((rows, cols), len(corners), block, outside_max, inside_max, tolerance)
