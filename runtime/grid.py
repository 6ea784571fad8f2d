"""Exact decision arithmetic: evidence on a saturated fixed-point grid.

A certificate is a theorem about the decision rule; the code must take the
decision the theorem reasons about for EVERY finite input, float32 or
float64, of any magnitude. Float sums cannot promise that (``S - M`` cancels
catastrophically, 1e308 overflows, a one-ulp difference breaks an exact
tie), so every defense decides on integers:

1. **One cell-wise map onto the grid** (:func:`to_grid`): ``q =
   floor(clip(u * unit / c_h, 0, unit))``, i.e. ``v = clip(u, 0, c_h)`` in
   grid steps rounded down, an integer in ``[0, unit]``. Without a ceiling c_h the grid's own ceiling
   :data:`DEFAULT_CEILING` (2^20) applies: cells above it saturate. The map
   depends on the cell's value, the map's (H, W) and c_h only, never on the
   other cells, so the clean map and any attacked map (the same map with one
   patch window changed) get the same integers outside the window, and the
   attacked cells land in ``[0, unit]`` whatever the attacker wrote there
   (+-1e300, the largest float32: saturated). float32 input is widened to
   float64 exactly first, so float32 and float64 maps of the same values
   give the same grid.
2. **Every sum exact**: ``unit = 2^(51 - ceil(log2(H W)))``, so a total over
   all cells is at most 2^51, and every sum, difference and bound that
   Algorithms 1 and 2 form stays an integer below 2^53 in magnitude: float64
   holds it exactly. (float64 rather than int64 keeps the integral-image code
   and its -inf sentinels; the 53-bit significand is the budget.) Resolution:
   ``c_h / unit``, e.g. 2^-21 = 4.8e-7 logits for a 26x26 map without c_h.
3. **Exact comparisons**: ties and strict inequalities are decided on those
   integers, so "ties go to the lowest class index" holds literally and no
   tolerance is needed. The one non-integer, the detection threshold T, is a
   dyadic rational (a float64); ``M > T S`` and ``lower > upper = gap /
   (1 - T)`` are decided by :func:`compare` exactly (a float screen, exact
   rational arithmetic for the few undecided entries).

How a defense uses this (robust masking, CBN, double masking, detection,
top-k alike):

- ``grid = grid_for(u.shape, clip)`` once per batch, then ``q = to_grid(u,
  grid)`` (or ``to_grid(u, grid, out=...)`` straight into an integral image):
  every later sum, max and difference of q is exact in float64.
- Decide with plain comparisons of those integers (``argmax`` for ties to
  the lowest index), never with a tolerance; multiply by a non-integer only
  through :func:`compare`.
- Scores that are not evidence sums (CBN's ``tanh``) go through
  :func:`scores_to_grid`: bounded scores rounded onto ``[-unit, unit]``.
- Report numbers in logit units with :meth:`Grid.to_logits`, but take the
  decision from the integers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: Every whole-map total on the grid stays at or below 2^GRID_BITS.
GRID_BITS = 51
#: Ceiling c_h of the grid when the defense has none: cells above saturate.
DEFAULT_CEILING = 2.0 ** 20


@dataclass(frozen=True)
class Grid:
    """The fixed-point grid of one map shape: ``q = floor(v * unit / ceiling)``."""

    ceiling: float  # c_h, or DEFAULT_CEILING without one
    unit: int       # grid value of the ceiling, a power of two

    @property
    def resolution(self) -> float:
        """Logits per grid step."""
        return self.ceiling / self.unit

    def to_logits(self, q: np.ndarray) -> np.ndarray:
        """Grid values back in logit units (rounded; for reports, never for decisions)."""
        return np.asarray(q, dtype=np.float64) * self.resolution


def unit_for(cells: int) -> int:
    """Grid value of the ceiling for maps of ``cells`` = H * W cells."""
    return 2 ** (GRID_BITS - max(0, math.ceil(math.log2(max(1, cells)))))


def grid_for(shape: tuple[int, ...], clip: float | None) -> Grid:
    """The grid of maps of ``shape`` (B, H, W, C) under the ceiling c_h ``clip``."""
    ceiling = DEFAULT_CEILING if clip is None else float(clip)
    return Grid(ceiling, unit_for(shape[1] * shape[2]))


def to_grid(u: np.ndarray, grid: Grid, out: np.ndarray | None = None, signed: bool = False) -> np.ndarray:
    """``floor(clip(u * unit / c_h, 0, unit))`` cell by cell: float64 integers in [0, unit].

    That is ``v = clip(u, 0, c_h)`` in grid steps, rounded down. ``out``
    (float64, the shape of ``u``) receives the result; the default is a new
    array. NaN stays NaN (such maps are never decided); +inf saturates at
    ``unit``, -inf gives 0. Each cell's value depends on that cell alone
    (IEEE operations, rounded the same wherever the cell sits).

    ``signed``: the sign kept, ``trunc(clip(u * unit / c_h, -unit, unit))``
    (provable detection's unclipped logits, saturated at +-c_h): the same
    integers as ``to_grid(u) - to_grid(-u)``, since scaling rounds the same
    whatever the sign, in three passes over the map instead of eight.
    """
    if out is not None and not out.flags.c_contiguous and out.size <= 1 << 14:
        # numpy's clip into a small strided view (an integral image's inner part) is
        # slower than into a contiguous buffer plus one strided copy; larger buffers
        # would cost fresh pages on every call.
        out[...] = to_grid(u, grid, signed=signed)
        return out
    if out is None:
        out = np.empty(u.shape, dtype=np.float64)
    scale = grid.unit / grid.ceiling
    if math.isfinite(scale) and scale > 0.0:
        np.multiply(u, scale, out=out, dtype=np.float64)  # float32 input widens exactly
    else:  # c_h so small (or large) that unit / c_h over- or underflows
        np.divide(u, grid.ceiling, out=out, dtype=np.float64)
        np.multiply(out, float(grid.unit), out=out)
    np.clip(out, -float(grid.unit) if signed else 0.0, float(grid.unit), out=out)
    # Toward zero: floor on [0, unit]; for negative cells, minus the floor of |u|.
    (np.trunc if signed else np.floor)(out, out=out)
    return out


def scores_to_grid(scores: np.ndarray, cells: int) -> tuple[np.ndarray, int]:
    """Bounded per-cell scores in [-1, 1] (e.g. CBN's tanh) as integers in
    [-unit, unit] (rounded to nearest), and the unit. Sums over the map stay
    exact in float64 as for :func:`to_grid`."""
    unit = unit_for(cells)
    out = np.multiply(scores, float(unit), dtype=np.float64)
    np.rint(out, out=out)
    np.clip(out, -unit, unit, out=out)
    return out, unit


# --------------------------------------------------------------------------
# Exact comparisons with a dyadic ratio.

def ratio(value: float) -> Fraction:
    """The exact rational value of a float (T, 1 - T)."""
    return Fraction(value)


def compare(x: np.ndarray, y: np.ndarray, r: Fraction) -> np.ndarray:
    """Sign (int8, shape of the broadcast) of ``x - r * y``, exactly.

    ``x`` and ``y`` are float64 arrays of integers (grid values, |.| <= 2^53)
    or -inf sentinels; ``r >= 0`` an exact rational. A float screen decides
    every entry whose float difference clears its rounding error; the rest
    (exact ties, near ties) are decided in exact rational arithmetic. An
    entry with -inf on both sides (no evidence at all) compares as 0.
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    rf = float(r)
    with np.errstate(invalid="ignore", over="ignore"):
        product = y * rf
        diff = x - product
        # |error of product and diff| <= 2^-51 (|x| + |product|), plus subnormal spacing.
        slack = (np.abs(x) + np.abs(product)) * 2.0 ** -49 + 2.0 ** -1000
        # A -inf sentinel on one side decides by itself (its slack would be inf).
        slack = np.where(np.isfinite(slack), slack, 0.0)
        sign = np.where(diff > slack, 1, np.where(diff < -slack, -1, 0)).astype(np.int8)
    unsure = np.flatnonzero((sign == 0) & np.isfinite(x) & np.isfinite(y))
    if unsure.size:
        flat_x, flat_y, flat_sign = x.ravel(), y.ravel(), sign.reshape(-1)
        for k in unsure:
            exact = Fraction(int(flat_x[k])) - r * int(flat_y[k])
            flat_sign[k] = (exact > 0) - (exact < 0)
        sign = flat_sign.reshape(x.shape)
    return sign


def exceeds_fraction(largest: np.ndarray, total: np.ndarray, thres: float) -> np.ndarray:
    """``largest > T * total`` exactly (Algorithm 1's masking test), bool array."""
    if thres == 0.0:
        return np.asarray(largest > 0.0)
    return compare(largest, total, ratio(thres)) > 0


def beats(lower: np.ndarray, gap: np.ndarray, thres: float) -> np.ndarray:
    """``lower > gap / (1 - T)`` exactly: a lower bound of y above a rival's
    upper bound ``gap / (1 - T)`` (Algorithm 2), bool array."""
    if thres == 0.0:
        return np.asarray(lower > gap)
    return compare(gap, lower, 1 - ratio(thres)) < 0
