"""Robust masking (PatchGuard Algorithm 1) over whole batches, in numpy.

Symbols follow README.md, "The math, in one screen": local logits ``u`` (B, H, W, C), clipped
evidence ``v = clip(u, 0, c_h)``, class totals ``S_c`` (B, C), largest window
sums ``M_c`` over (a, b) windows, detection threshold ``T``. The evidence
lives on the exact fixed-point grid of :mod:`.grid` (integers held in
float64): every sum comes from one integral image of grid values and is
exact, so decisions, ties and bounds are those of the math, for any finite
input. Evidence returned to callers is converted back to logit units.

Maps holding NaN or inf have no trustworthy evidence: :func:`robust_masking`
returns :data:`NO_LABEL` (-1) and a NaN evidence row for them instead of a
label, and no certificate is ever issued for them.

Classes are pruned before any window sum: only classes whose
(over-estimated) total ``S_c`` could still matter get their window sums
computed (:class:`MaskEvidence`, which also shares them between the
prediction, the certificate and the certified-patch-size search of a map).
:func:`robust_masking` returns every class's evidence, so it computes all;
:meth:`MaskEvidence.predictions` gives the same predictions from the pruned
classes (:func:`.defenses.predict`).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Union

import numpy as np
import numpy.typing as npt

from .errors import PatchGuardError
from .geometry import IntOrPair, Pair, as_pair, check_fits
from .grid import DEFAULT_CEILING, Grid, exceeds_fraction, grid_for, to_grid

#: Prediction given for a map that holds NaN or inf (no label can be trusted).
NO_LABEL = -1

# Classes whose window sums the prediction computes first (by decreasing S_c).
_FIRST_CLASSES = 3
# Elements (B * H * W * C) per chunk: keeps float64 temporaries cache-sized.
_CHUNK_ELEMENTS = 1 << 17
_EPS32 = float(np.finfo(np.float32).eps)
# With this many classes or more, a quarter of them costs about as much to
# gather as all of them in one contiguous pass.
_GATHER_CLASSES = 64
# Up to this many classes, one integral image of all of them serves every
# step (no float32 pre-pass, no pruning): cheaper than gathering a few.
_WHOLE_CLASSES = 16
# Up to this many classes, maxima over cells or classes go through a transposed copy.
_SHORT_AXIS = 32
# Integral images at least this large are accumulated row by row (see _accumulate).
_ROWWISE_ELEMENTS = 1 << 14


# --------------------------------------------------------------------------
# Checking what the caller handed us.

def check_logits(local_logits: np.ndarray) -> np.ndarray:
    """Local logits as a 4-D float array (B, H, W, C), or a PatchGuardError."""
    u = np.asarray(local_logits)
    if u.ndim != 4:
        raise PatchGuardError(
            f"local logits must have shape (B, H, W, C), got an array of shape {u.shape}"
        )
    if u.dtype.kind in "biu":
        u = u.astype(np.float64)
    elif u.dtype.kind != "f":
        raise PatchGuardError(f"local logits must be numbers, got dtype {u.dtype}")
    if min(u.shape[1:]) < 1:
        raise PatchGuardError(f"local logits need at least one cell and one class, got {u.shape}")
    return u


def check_params(thres: float, clip: Optional[float]) -> tuple[float, Optional[float]]:
    """Validate the detection threshold T in [0, 1) and the ceiling c_h > 0."""
    try:
        thres = float(thres)
    except (TypeError, ValueError):
        raise PatchGuardError(
            f"thres (detection threshold T) must be a number in [0, 1), got {thres!r}"
        ) from None
    if not 0.0 <= thres < 1.0:
        raise PatchGuardError(f"thres (detection threshold T) must be in [0, 1), got {thres}")
    if clip is not None:
        try:
            clip = float(clip)
        except (TypeError, ValueError):
            raise PatchGuardError(f"clip (ceiling c_h) must be a positive number, got {clip!r}") from None
        if not clip > 0.0:
            raise PatchGuardError(f"clip (ceiling c_h) must be a positive number (or none), got {clip}")
    return thres, clip


def check_window(window: IntOrPair, shape: tuple[int, ...], name: str = "window") -> Pair:
    """(a, b) that fits inside the (H, W) map of ``shape`` (B, H, W, C)."""
    return check_fits(as_pair(window, name), shape[1:3])


def check_labels(labels: Optional[np.ndarray], batch: int, classes: int) -> Optional[np.ndarray]:
    """Labels (B,) as int64 within [0, C), or a PatchGuardError."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != batch:
        raise PatchGuardError(f"expected {batch} labels (one per map), got an array of shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise PatchGuardError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= classes)
    if bad.any():
        raise PatchGuardError(
            f"labels must be class indices in [0, {classes}), got {int(y[bad][0])}"
        )
    return y


def finite_maps(u: np.ndarray) -> np.ndarray:
    """(B,) True where the map holds no NaN and no inf."""
    flat = u.reshape(u.shape[0], -1)
    # min/max propagate NaN and expose +-inf in two cheap reductions.
    return np.isfinite(flat.min(axis=1)) & np.isfinite(flat.max(axis=1))


def batch_slices(u: np.ndarray, per_map: Optional[int] = None, budget: int = _CHUNK_ELEMENTS) -> list[slice]:
    """Slices of u's batch (axis 0) small enough that the float64 temporaries
    of ``per_map`` elements per map (default: the map's own H W C) stay within
    ``budget`` elements, cache-sized."""
    per_map = max(1, math.prod(u.shape[1:]) if per_map is None else per_map)
    step = max(1, budget // per_map)
    return [slice(i, min(i + step, u.shape[0])) for i in range(0, u.shape[0], step)]


# --------------------------------------------------------------------------
# Integral images and window sums.

def clipped(u: np.ndarray, clip: Optional[float]) -> np.ndarray:
    """``v = clip(u, 0, c_h)`` on the exact grid (:func:`.grid.to_grid`), a new
    float64 array of integers in grid units."""
    return to_grid(u, grid_for(u.shape, clip))


def clipped_integral(
    u: np.ndarray, grid: Union[Grid, float, None], index: Optional[np.ndarray] = None, signed: bool = False,
) -> np.ndarray:
    """Integral image of the grid values of ``v = clip(u, 0, c_h)``: (B, H + 1, W + 1, K).

    ``table[:, i, j, k]`` is the sum of ``v[:, :i, :j, k]`` (exact: grid
    integers), so ``table[:, H, W]`` is the total S. ``index`` (B, K) picks
    K classes per map (default: all C). The grid map and the class gather
    write straight into the table. ``grid`` may also be the ceiling c_h
    (None: none), meaning that ceiling's grid for u's shape. ``signed``:
    ``v = clip(u, -c_h, c_h)`` instead (:func:`.grid.to_grid`).
    """
    if not isinstance(grid, Grid):
        grid = grid_for(u.shape, grid)
    batch, height, width, _ = u.shape
    if index is None:
        source = u
    else:
        rows = np.arange(batch)[:, None]
        source = np.moveaxis(u[rows, :, :, index], 1, 3)  # (B, K, H, W) -> (B, H, W, K)
    table = np.empty((batch, height + 1, width + 1, source.shape[3]), dtype=np.float64)
    table[:, 0] = 0.0
    table[:, 1:, 0] = 0.0
    inner = table[:, 1:, 1:]
    if batch == 1 and inner.size < _ROWWISE_ELEMENTS:  # one small map (the camera case)
        inner[0] = _running_sums(to_grid(source[0], grid, signed=signed))
        return table
    to_grid(source, grid, out=inner, signed=signed)
    _accumulate(inner)
    return table


def integral(v: np.ndarray) -> np.ndarray:
    """Integral image over axes 1, 2 of any (B, H, W, ...) array, float64 or int64."""
    dtype = np.int64 if v.dtype.kind in "biu" else np.float64
    out = np.zeros((v.shape[0], v.shape[1] + 1, v.shape[2] + 1) + v.shape[3:], dtype=dtype)
    inner = out[:, 1:, 1:]
    inner[...] = v
    _accumulate(inner)
    return out


def _accumulate(inner: np.ndarray) -> None:
    """In-place running sums over axes 1 then 2 of (B, H, W, ...).

    Every caller sums integers (grid values, votes) whose running sums stay
    below 2^53, so any order of additions gives the same, exact result; the
    order is picked for speed. Large arrays go row by row (whole rows per
    step, about three times faster than cumsum along a non-last axis); a
    small single float map goes through two small matrix products with triangular
    matrices of ones (numpy's cumsum loops element by element, several times
    slower at that size); other small ones through cumsum.
    """
    small = inner.size < _ROWWISE_ELEMENTS
    if small and inner.shape[0] == 1 and inner.dtype == np.float64 and inner.ndim == 4:
        inner[0] = _running_sums(inner[0])
        return
    if small:
        np.cumsum(inner, axis=1, out=inner)
        np.cumsum(inner, axis=2, out=inner)
        return
    for i in range(1, inner.shape[1]):
        np.add(inner[:, i - 1], inner[:, i], out=inner[:, i])
    for j in range(1, inner.shape[2]):
        np.add(inner[:, :, j - 1], inner[:, :, j], out=inner[:, :, j])


def spatial_max(x: np.ndarray) -> np.ndarray:
    """Largest value over the cells of (B, H, W, K): (B, K).

    numpy reduces over axes with a short innermost axis (a few classes) one
    short row at a time, several times slower than a transposed copy reduced
    along its contiguous axis; max is exact, so both give the same bits."""
    batch, height, width, k = x.shape
    cells = x.reshape(batch, height * width, k)
    if k > _SHORT_AXIS:  # long rows: numpy's own reduction is fast, a copy would not pay
        return cells.max(axis=1)
    return np.ascontiguousarray(cells.transpose(0, 2, 1)).max(axis=2)


def class_max(x: np.ndarray) -> np.ndarray:
    """Largest value over the last (class) axis of (..., K): (...), by the
    same transposed copy as :func:`spatial_max` when K is short."""
    if x.shape[-1] > _SHORT_AXIS:
        return x.max(axis=-1)
    return np.ascontiguousarray(np.moveaxis(x, -1, 0)).max(axis=0)


@functools.lru_cache(maxsize=16)
def _every_class(batch: int, classes: int) -> np.ndarray:
    """(B, C) read-only class indices 0 .. C - 1 in every row."""
    index = np.repeat(np.arange(classes)[None], batch, axis=0)
    index.setflags(write=False)
    return index


def _running_sums(v: np.ndarray) -> np.ndarray:
    """Running sums over axes 0 and 1 of one small float64 map (H, W, K):
    two products with triangular matrices of ones (see :func:`_accumulate`)."""
    height = v.shape[0]
    rows = np.matmul(_ones_below(height), v.reshape(height, -1))
    return np.matmul(_ones_below(v.shape[1]), rows.reshape(v.shape))


@functools.lru_cache(maxsize=16)
def _ones_below(n: int) -> np.ndarray:
    """(n, n) lower-triangular ones (diagonal included): ``L @ x`` is the running sum of x."""
    ones = np.tril(np.ones((n, n)))
    ones.setflags(write=False)
    return ones


def box_sums(table: np.ndarray, a: int, b: int, wrap: bool = False) -> np.ndarray:
    """Sum of every (a, b) window from an integral image.

    (B, H + 1, W + 1, ...) -> (B, H - a + 1, W - b + 1, ...); entry (i, j) is
    the window whose top-left cell is (i, j). Always the same four corners in
    the same order, so equal windows get bit-equal sums. ``wrap``: columns
    wrap around (the window starting at column j covers j .. j + b - 1 mod W),
    giving (B, H - a + 1, W, ...).
    """
    if wrap:
        table = wrapped(table, b - 1)
    out = np.subtract(table[:, a:, b:], table[:, :-a, b:])
    np.subtract(out, table[:, a:, :-b], out=out)
    np.add(out, table[:, :-a, :-b], out=out)
    return out


def wrapped(table: np.ndarray, extra: int) -> np.ndarray:
    """The integral image (B, H + 1, W + 1, ...) of the map with its first
    ``extra`` columns appended after the last, (B, H + 1, W + 1 + extra, ...):
    column W + k holds column W plus column k (sums of whole columns, so
    exact wherever the table is)."""
    width = table.shape[2] - 1
    if not 0 <= extra <= width:
        raise PatchGuardError(f"cannot wrap {extra} columns around a map {width} columns wide")
    tail = table[:, :, width : width + 1] + table[:, :, 1 : extra + 1]
    return np.concatenate([table, tail], axis=2)


def containing_max(sums: np.ndarray, a: int, b: int, pa: int, pb: int, wrap: bool = False) -> np.ndarray:
    """For each (pa, pb) patch position, the largest (a, b) window sum over the
    windows that contain it.

    ``sums`` (B, H - a + 1, W - b + 1, ...) -> (B, H - pa + 1, W - pb + 1, ...).
    The windows containing the patch at (i, j) start at rows
    ``max(0, i + pa - a) .. min(i, H - a)``: a sliding maximum of length
    ``a - pa + 1``, one axis at a time (``sums`` itself when pa = a, pb = b).
    ``wrap`` (columns wrap around, ``sums`` (B, H - a + 1, W, ...) from
    :func:`box_sums`): the windows containing column j start at
    ``j + pb - b .. j`` (mod W), so the window sums are first extended on
    the left by their last ``b - pb`` columns, and W columns come out.
    """
    out = sums
    if wrap and b > pb:
        width = sums.shape[2]
        out = np.concatenate([sums[:, :, width - (b - pb) :], sums], axis=2)
    for axis, extra in ((1, a - pa), (2, b - pb)):
        if extra == 0:
            continue
        length = out.shape[axis]
        shape = list(out.shape)
        shape[axis] = length + extra
        result = np.full(shape, -np.inf)
        for shift in range(extra + 1):
            target = result[_along(axis, shift, shift + length)]
            np.maximum(target, out, out=target)
        out = result
    if wrap and b > pb:
        out = out[:, :, b - pb : b - pb + sums.shape[2]]
    return out


def _along(axis: int, start: int, stop: int) -> tuple:
    return (slice(None),) * axis + (slice(start, stop),)


# --------------------------------------------------------------------------
# Class totals and gathering the classes that matter.

def upper_class_totals(u: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Over-estimates of the grid totals ``S_c`` (B, C) float64, and which
    maps are finite (B,).

    The totals are never below the exact values and only rank and prune
    classes, never serve as a bound. float64 input: the exact grid totals.
    float32 input: a float32 pass over ``max(u, 0)`` (and ``min(., c_h)``
    under a user's ceiling, rounded up to a float32), inflated by the float32
    summation error bound and the grid's rounding, capped at the largest
    possible total. Finiteness comes with it: NaN and +inf reach the pass's
    totals (or, under a ceiling, the map's maximum), -inf its minimum; a
    float32 total that overflowed is rechecked cell by cell.
    """
    batch, height, width, classes = u.shape
    cells = height * width
    if u.dtype != np.float32:
        return clipped_integral(u, grid)[:, -1, -1], finite_maps(u)
    ceiling = None
    if grid.ceiling != DEFAULT_CEILING:
        ceiling = np.float32(grid.ceiling)
        if not np.isfinite(ceiling):
            ceiling = None
        elif float(ceiling) < grid.ceiling:
            ceiling = np.nextafter(ceiling, np.float32(np.inf))
    if classes > 64 and ceiling is None:
        return _positive_totals(u.reshape(batch, cells, classes), grid)
    lowest = u.reshape(batch, -1).min(axis=1)
    if classes <= 64:
        v = np.maximum(u, np.float32(0.0))
        if ceiling is not None:
            np.minimum(v, ceiling, out=v)
        totals = v.sum(axis=(1, 2), dtype=np.float32).astype(np.float64)
    else:  # one map at a time through a reused buffer: stays in cache
        totals = np.empty((batch, classes), dtype=np.float64)
        buffer = np.empty((cells, classes), dtype=np.float32)
        for n in range(batch):
            np.maximum(u[n].reshape(cells, classes), np.float32(0.0), out=buffer)
            if ceiling is not None:
                np.minimum(buffer, ceiling, out=buffer)
            totals[n] = buffer.sum(axis=0)
    finite = np.isfinite(lowest) & np.isfinite(totals.sum(axis=1))
    if ceiling is not None:  # c_h turns +inf into a finite value
        finite &= np.isfinite(u.reshape(batch, -1).max(axis=1))
    else:  # a huge finite map can overflow the float32 totals: look again
        for k in np.flatnonzero(~finite & np.isfinite(lowest)):
            finite[k] = bool(np.isfinite(u[k]).all())
    # Summing n non-negative float32 terms errs by at most (n - 1) * eps32 relative.
    return _scaled_totals(totals, cells, grid), finite


def _positive_totals(u: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """:func:`upper_class_totals` of float32 maps (B, cells, C) with many
    classes and no user ceiling, from two column sums per map.

    ``sum max(u, 0) = (sum u + sum |u|) / 2``: numpy's ``maximum`` runs at
    half the speed of ``abs``, and these sums need no separate pass for
    finiteness (NaN and +-inf reach ``sum u`` or ``sum |u|``; a float32 sum
    that overflows sends its map to a cell-by-cell check, and its total to
    the cap). Each float32 sum errs by at most
    ``(cells - 1) * eps32 * sum |u|``, whatever the order of additions, so
    ``2 * cells * eps32 * sum |u|`` on top of their half-sum is an
    over-estimate; the caller's grid scaling and cap follow.
    """
    batch, cells, classes = u.shape
    signed = np.empty((batch, classes), dtype=np.float64)
    magnitude = np.empty((batch, classes), dtype=np.float64)
    buffer = np.empty((cells, classes), dtype=np.float32)
    for n in range(batch):
        # einsum's own loops, not BLAS: a threaded BLAS stalls on a busy robot.
        signed[n] = np.einsum("ij->j", u[n])
        magnitude[n] = np.einsum("ij->j", np.abs(u[n], out=buffer))
    with np.errstate(over="ignore", invalid="ignore"):
        totals = 0.5 * (signed + magnitude) + (2.0 * cells * _EPS32) * magnitude
        finite = np.isfinite(signed.sum(axis=1)) & np.isfinite(magnitude.sum(axis=1))
    # A float32 sum of huge finite cells can overflow: look at those maps again.
    for k in np.flatnonzero(~finite):
        finite[k] = bool(np.isfinite(u[k]).all())
    return _scaled_totals(totals, cells, grid), finite


def _scaled_totals(totals: np.ndarray, cells: int, grid: Grid) -> np.ndarray:
    """Over-estimated float32 totals in logit units as grid totals: widened by
    the float32 summation error bound and the grid's rounding (the grid map
    rounds down, unit / c_h by at most 2^-52), capped at the largest possible
    total; NaN (a non-finite map) becomes the cap."""
    with np.errstate(over="ignore", invalid="ignore"):
        totals = totals * ((1.0 + 2.0 * cells * _EPS32) * (grid.unit / grid.ceiling) * (1.0 + 1e-12)) + 1.0
    np.minimum(totals, float(cells * grid.unit), out=totals)
    totals[np.isnan(totals)] = float(cells * grid.unit)
    return totals


def ranked_classes(totals: np.ndarray) -> np.ndarray:
    """Class indices (B, C) by decreasing total.

    Only prefixes "every class with a total of at least x" are ever used
    (pruning), and those do not depend on how equal totals are ordered, so
    the faster unstable sort serves; the order is still a function of the
    map's own totals alone."""
    return np.argsort(-totals, axis=1)


# --------------------------------------------------------------------------
# Algorithm 1.

def evidence_from(total: np.ndarray, largest: np.ndarray, thres: float) -> np.ndarray:
    """Masked evidence on the grid: ``S - M`` where ``S > 0`` and ``M > T * S``
    (decided exactly), else ``S``."""
    masked = (total > 0) & exceeds_fraction(largest, total, thres)
    return np.where(masked, total - largest, total)


def _evidence(table: np.ndarray, a: int, b: int, thres: float, wrap: bool = False) -> np.ndarray:
    """Masked evidence (B, K) from an integral image (B, H + 1, W + 1, K)."""
    return evidence_from(table[:, -1, -1], spatial_max(box_sums(table, a, b, wrap)), thres)


def robust_masking(
    local_logits: np.ndarray,
    window: IntOrPair,
    *,
    thres: float = 0.0,
    clip: Optional[float] = None,
    wrap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 on a batch: predictions (B,) int64 and evidence (B, C) float64.

    ``local_logits`` u is (B, H, W, C); ``window`` the mask (a, b) in cells (an
    int for a square); ``thres`` T; ``clip`` the ceiling c_h (None: no
    ceiling). Evidence of class c is ``S_c - M_c`` when ``S_c > 0`` and
    ``M_c > T * S_c``, else ``S_c``; the prediction is its argmax on the
    exact grid (:mod:`.grid`), ties to the lowest class index. The evidence
    returned is in logit units (grid values times the resolution; exact ties
    on the grid stay ties). A map holding NaN or inf gets :data:`NO_LABEL`
    and a row of NaN evidence. ``wrap``: windows wrap around the columns
    (Mask-DS's band map, :mod:`.smoothing`).
    """
    u = check_logits(local_logits)
    thres, clip = check_params(thres, clip)
    a, b = check_window(window, u.shape)
    grid = grid_for(u.shape, clip)
    evidence = np.empty((u.shape[0], u.shape[3]), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for part in batch_slices(u):
            evidence[part] = _evidence(clipped_integral(u[part], grid), a, b, thres, wrap)
    finite = finite_maps(u)
    predictions = np.where(finite, evidence.argmax(axis=1), NO_LABEL)
    evidence = grid.to_logits(evidence)
    evidence[~finite] = np.nan
    return predictions.astype(np.int64), evidence


def each_chunk(
    u: np.ndarray, mask: Pair, thres: float, clip: Optional[float],
    figure: Callable[["MaskEvidence", slice], np.ndarray], dtype: npt.DTypeLike, wrap: bool = False,
) -> np.ndarray:
    """``figure(evidence, part)``, one value per map, for checked maps u (B, H,
    W, C): one :class:`MaskEvidence` per chunk (:func:`batch_slices`), so its window
    sums serve whatever the figure asks of that chunk; a (B,) array of ``dtype``.

    The one loop of the masking entry points (:func:`.defenses.predict` and
    :func:`.defenses.certify` for "mask", margins, top-k membership).
    """
    out = np.zeros(u.shape[0], dtype=dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for part in batch_slices(u):
            out[part] = figure(MaskEvidence(u[part], mask, thres, clip, wrap), part)
    return out


class MaskEvidence:
    """What Algorithm 1 and 2 need of a chunk of maps u (B, H, W, C) under one
    (a, b) mask, each piece computed once and only for the classes that matter.

    ``grid`` is the exact grid (:mod:`.grid`) every sum lives on; ``totals``
    over-estimate the grid totals S_c (:func:`upper_class_totals`) and
    ``order`` ranks them; ``finite`` (B,) marks maps without NaN or inf. Exact totals and mask window sums come from
    :meth:`ranked`, for a prefix of the ranking that grows on demand (by
    doubling, or straight to all classes once a quarter of many classes is
    asked for: one contiguous pass then beats gathering them). Every class's sums
    come from its own integral image, bit-equal however classes are grouped.
    ``wrap``: windows wrap around the columns (window sums then have W columns).
    """

    def __init__(self, u: np.ndarray, mask: Pair, thres: float, clip: Optional[float],
                 wrap: bool = False) -> None:
        self.u, self.mask, self.thres, self.clip, self.wrap = u, mask, thres, clip, wrap
        self.grid = grid_for(u.shape, clip)
        self.known = 0  # ranked classes covered by the sums below
        self.index = self.exact = self.windows = np.empty(0)
        self._label: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
        self._table: Optional[np.ndarray] = None  # integral image of the ``index`` classes
        self._largest: Optional[np.ndarray] = None  # M_c of the ``index`` classes, once asked for
        batch, classes = u.shape[0], u.shape[3]
        if classes <= _WHOLE_CLASSES:
            self._table = clipped_integral(u, self.grid)
            self.totals, self.finite = self._table[:, -1, -1], finite_maps(u)
            self.index = _every_class(batch, classes)
            self.exact, self.windows = self.totals, box_sums(self._table, *mask, wrap)
            self.known = classes
        else:
            self.totals, self.finite = upper_class_totals(u, self.grid)
        self.order = ranked_classes(self.totals)

    @property
    def tol(self) -> np.ndarray:
        """Margin (B,) for code that divides by (1 - T) in floats (top-k bounds):
        0 when T = 0 (every bound is then an exact grid integer), else
        :func:`tolerance`, far above that division's rounding. The
        certificate itself compares exactly and needs none."""
        if self.thres == 0.0:
            return np.zeros(self.totals.shape[0])
        return tolerance(self.totals)

    def subset(self, maps: np.ndarray) -> "MaskEvidence":
        """The same evidence for the maps ``maps`` (an index or bool array) only."""
        part = object.__new__(MaskEvidence)
        part.__dict__.update(self.__dict__)
        for name in ("u", "totals", "finite", "order"):
            setattr(part, name, getattr(self, name)[maps])
        if self.known:
            part.index, part.exact, part.windows = (
                self.index[maps], self.exact[maps], self.windows[maps])
        if self._table is not None:
            part._table = self._table[maps]
        if self._largest is not None:
            part._largest = self._largest[maps]
        if self._label is not None:
            part._label = tuple(x[maps] for x in self._label)
        return part

    def ranked(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes ``index`` (B, K), their exact S (B, K) and mask window sums
        (B, H - a + 1, W - b + 1, K), covering at least the k best ranked
        classes (a prefix of ``order`` when K < C, all classes otherwise)."""
        batch, classes = self.totals.shape
        if k > self.known:
            k = max(k, 2 * self.known)
            if 4 * k >= classes >= _GATHER_CLASSES or k >= classes:
                k, index = classes, None
            else:
                index = self.order[:, :k]
            table = clipped_integral(self.u, self.grid, index)
            if index is None:
                index = _every_class(batch, classes)
            self.index, self._table = index, table
            self.exact, self.windows = table[:, -1, -1], box_sums(table, *self.mask, self.wrap)
            self.known, self._largest = k, None
        return self.index, self.exact, self.windows

    def largest(self) -> np.ndarray:
        """``M_c`` (B, K): each summed class's (``index``) largest mask window sum,
        computed once for the sums :meth:`ranked` last returned."""
        if self._largest is None:
            self._largest = spatial_max(self.windows)
        return self._largest

    def label(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integral image (B, H + 1, W + 1) and mask window sums of v[..., y], y (B,)."""
        if self._label is None or not np.array_equal(self._label[0], y):
            known = self._table
            if known is not None and (at := self.index == y[:, None]).any(axis=1).all():
                # y is among the classes summed already: gather, sum nothing again.
                rows, column = np.arange(y.shape[0]), at.argmax(axis=1)
                table, windows = known[rows, :, :, column], self.windows[rows, :, :, column]
            else:
                table = clipped_integral(self.u, self.grid, y[:, None])[..., 0]
                windows = box_sums(table, *self.mask, self.wrap)
            self._label = (y.copy(), table, windows)
        return self._label[1], self._label[2]

    def strongest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per map, the class with the largest exact total S_c (ties: the
        lowest index): class (B,), S_c (B,) and its mask window sums
        (B, H - a + 1, W - b + 1). Free once :meth:`predictions` ran (the
        top class is then among the computed ones)."""
        classes = self.totals.shape[1]
        k = 1
        while True:
            index, exact, windows = self.ranked(k)
            top = exact.max(axis=1)
            k = int((self.totals >= top[:, None]).sum(axis=1).max(initial=0))
            if k <= self.known:
                break
        rows = np.arange(index.shape[0])
        pos = np.where(exact == top[:, None], index, classes).argmin(axis=1)
        return index[rows, pos], exact[rows, pos], windows[rows, :, :, pos]

    def predictions(self) -> np.ndarray:
        """Algorithm 1's predictions (B,) int64; :data:`NO_LABEL` for maps with NaN or inf.

        A class whose total is below the best masked evidence found so far
        cannot win (its evidence is at most S_c), so window sums are taken
        for ranked classes until the rest all fall below it. The survivors'
        evidence is bit-equal to :func:`robust_masking`'s, so ties go to the
        lowest class index exactly as its argmax does.
        """
        classes = self.totals.shape[1]
        k = _FIRST_CLASSES
        while True:
            index, exact, _ = self.ranked(k)
            evidence = evidence_from(exact, self.largest(), self.thres)
            best = evidence.max(axis=1)
            # Ranked by total, the classes with S_c >= best are a prefix of `order`.
            k = int((self.totals >= best[:, None]).sum(axis=1).max(initial=0))
            if k <= self.known:
                break
        winners = np.where(evidence == best[:, None], index, classes).min(axis=1)
        return np.where(self.finite & (winners < classes), winners, NO_LABEL).astype(np.int64)


def tolerance(totals: np.ndarray) -> np.ndarray:
    """A relative margin (B,), 1e-9 * max(1, max_c S_c), for code that still
    divides or sums in floats (see :mod:`.grid` for the exact way). Exact
    integer comparisons on the grid need none."""
    if totals.shape[1] == 0:
        return np.full(totals.shape[0], 1e-9)
    return 1e-9 * np.maximum(1.0, totals.max(axis=1))
