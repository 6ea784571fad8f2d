"""Certificates for robust masking (PatchGuard Algorithm 2), whole batches.

For a label y, every (pa, pb) patch position P under an (a, b) mask
(README.md, "The math, in one screen", "Smaller patches than the mask"):

- upper bound of a class c != y: ``(S_c - max_{W >= P} sum v[W, c]) / (1 - T)``;
- lower bound of y: with ``v'`` = ``v[..., y]`` with P zeroed and ``t = sum v'``,
  ``t - M0`` when T = 0 or ``M0 > T t``, else ``t - OV`` (``M0``: largest mask
  window sum of ``v'``; ``OV``: the same over the windows overlapping P).

y is certified iff ``lower > upper`` at every P for every c. All of it is
exact: the sums are integers on the grid of :mod:`.grid`, and the two
comparisons involving T (``M0 > T t`` and ``lower > gap / (1 - T)``) go
through :func:`.grid.compare`, so no tolerance is needed and an exact tie is
never a certificate. The work is arranged so the exact lower bound is rarely needed:

1. cheap sufficient test: ``lower >= S_y - sum v[P, y] - M_y`` (zeroing P can
   only shrink the best window), so a position where that already beats the
   upper bound is safe;
2. cheap necessary test: ``lower <= S_y - max_{W >= P} sum v[W, y]``, so a
   position where that does not beat the upper bound refutes the image;
3. the exact lower bound, from the integral image around P, only for the
   positions neither test decided, in images not yet refuted.

Classes whose total alone cannot reach the cheapest lower bound are dropped
before any window sum of theirs is computed, and the best-ranked few are
bounded first (a refutation by some classes stands for all). The window sums
live in a :class:`~.masking.MaskEvidence`, shared by the prediction and
every patch size tried on the same maps.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import numpy.typing as npt

from .errors import PatchGuardError
from .geometry import IntOrPair, Pair, as_pair, window_shape
from .grid import beats, exceeds_fraction
from .masking import (
    NO_LABEL,
    MaskEvidence,
    batch_slices,
    box_sums,
    check_labels,
    check_logits,
    check_params,
    check_window,
    class_max,
    containing_max,
    each_chunk,
    wrapped,
)

log = logging.getLogger(__name__)

# Best-ranked classes bounded first (see certify_evidence).
_FIRST_BOUNDED = 16
# Flagged positions handled per vectorized step of the exact lower bound.
_EXACT_ELEMENTS = 1 << 19


def check_patch_window(patch_window: Optional[IntOrPair], mask: Pair) -> Pair:
    """Patch window (pa, pb) no larger than the mask (a, b); default the mask."""
    if patch_window is None:
        return mask
    pa, pb = as_pair(patch_window, "patch_window")
    if pa > mask[0] or pb > mask[1]:
        raise PatchGuardError(
            f"patch window {pa}x{pb} is larger than the {mask[0]}x{mask[1]} mask: "
            "masking cannot certify a patch the mask does not cover"
        )
    return pa, pb


# --------------------------------------------------------------------------
# Public entry points.

def per_map(
    local_logits: np.ndarray, window: IntOrPair, patch_window: Optional[IntOrPair], thres: float,
    clip: Optional[float], labels: Optional[np.ndarray],
    figure: Callable[[MaskEvidence, np.ndarray, Pair], np.ndarray], dtype: npt.DTypeLike, wrap: bool = False,
) -> np.ndarray:
    """The inputs checked once, then ``figure(evidence, y, patch)`` chunk by chunk
    (:func:`.masking.each_chunk`) into a (B,) array of ``dtype``.

    y is ``labels``, or each map's own robust-masking prediction
    (:func:`own_labels`); ``patch`` is ``patch_window`` (default: the mask
    ``window``); ``wrap``: windows and patches wrap around the columns (Mask-DS).
    Certificates (:func:`.defenses.certify`) and margins (:mod:`.topk`) come this way.
    """
    u = check_logits(local_logits)
    thres, clip = check_params(thres, clip)
    mask = check_window(window, u.shape)
    patch = check_patch_window(patch_window, mask)
    y = check_labels(labels, u.shape[0], u.shape[3])
    return each_chunk(u, mask, thres, clip,
                      lambda evidence, part: figure(evidence, own_labels(evidence) if y is None else y[part], patch),
                      dtype, wrap)


def largest_certified(
    local_logits: np.ndarray,
    window: IntOrPair,
    patch_windows: Sequence[IntOrPair],
    *,
    thres: float = 0.0,
    clip: Optional[float] = None,
    labels: Optional[np.ndarray] = None,
    wrap: bool = False,
) -> np.ndarray:
    """Index (B,) into ``patch_windows`` of the largest patch window for which
    the label stays certified under the (a, b) mask ``window``; -1 when none.

    ``patch_windows`` must grow (each contains the previous one) and fit in
    the mask. ``labels=None`` uses each map's robust-masking prediction, which
    does not depend on the patch. ``wrap`` as in :func:`per_map`. The
    search is :func:`certify_batch`'s.
    """
    u = check_logits(local_logits)
    thres, clip = check_params(thres, clip)
    a, b = check_window(window, u.shape)
    pairs = check_patch_windows(patch_windows, (a, b))
    y = check_labels(labels, u.shape[0], u.shape[3])
    return certify_batch(u, (a, b), pairs, thres, clip, labels=y, wrap=wrap).index


def check_patch_windows(patch_windows: Sequence[IntOrPair], mask: Pair) -> list[Pair]:
    """Patch windows that fit in the mask, each containing the one before."""
    if len(patch_windows) == 0:
        raise PatchGuardError("give at least one patch window")
    pairs = [check_patch_window(p, mask) if p is not None else mask for p in patch_windows]
    for before, after in itertools.pairwise(pairs):
        if after[0] < before[0] or after[1] < before[1]:
            raise PatchGuardError(
                f"patch windows must grow, each containing the one before; got {before} then {after}"
            )
    return pairs


def certified_patch_px(
    local_logits: np.ndarray,
    patch_sizes_px: Sequence[IntOrPair],
    receptive_field: int,
    stride: int,
    window: Optional[IntOrPair] = None,
    *,
    thres: float = 0.0,
    clip: Optional[float] = None,
    labels: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Largest certified patch (B,) in model pixels from ``patch_sizes_px``; 0 when none.

    Sizes are ints (square) or (height, width); they are sorted by area and
    mapped to cell windows with :func:`geometry.window_shape`. The mask
    ``window`` defaults to the window of the largest size. Returns the side
    of the certified size for square sizes, the height for rectangular ones
    (use :func:`largest_certified` for the index).
    """
    if len(patch_sizes_px) == 0:
        raise PatchGuardError("give at least one patch size")
    sizes = sorted((as_pair(p, "patch size") for p in patch_sizes_px), key=lambda p: (p[0] * p[1], p))
    windows = [window_shape(p, receptive_field, stride) for p in sizes]
    mask = as_pair(window) if window is not None else windows[-1]
    index = largest_certified(local_logits, mask, windows, thres=thres, clip=clip, labels=labels)
    heights = np.array([0] + [p[0] for p in sizes], dtype=np.int64)
    return heights[index + 1]


@dataclass(frozen=True)
class CertifiedSummary:
    """Batch figures: counts and fractions over the n maps."""

    n: int
    labelled: bool
    correct: int          # predictions equal to the labels (0 without labels)
    certified: int        # certified labels (true labels when labelled)
    no_label: int         # maps with NaN/inf (no prediction)

    @property
    def accuracy(self) -> Optional[float]:
        return self.correct / self.n if self.labelled and self.n else None

    @property
    def certified_fraction(self) -> float:
        return self.certified / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {
            "n": self.n, "labelled": self.labelled, "correct": self.correct,
            "certified": self.certified, "no_label": self.no_label,
            "accuracy": self.accuracy, "certified_fraction": self.certified_fraction,
        }


def summarize(
    predictions: np.ndarray, certified: np.ndarray, labels: Optional[np.ndarray] = None
) -> CertifiedSummary:
    """Accuracy and certified counts of a batch (certified accuracy when labelled)."""
    predictions = np.asarray(predictions)
    certified = np.asarray(certified, dtype=bool)
    correct = int((predictions == labels).sum()) if labels is not None else 0
    return CertifiedSummary(
        n=int(predictions.shape[0]), labelled=labels is not None, correct=correct,
        certified=int(certified.sum()), no_label=int((predictions == NO_LABEL).sum()),
    )


# --------------------------------------------------------------------------
# Batch certification and the certified-patch-size search (pipeline, pg-certify,
# pg-bench and largest_certified all go through certify_batch).

@dataclass(frozen=True)
class BatchCertificate:
    """Robust masking and its certificates for B maps under one mask.

    ``labels`` (B,): the label each certificate is for (the robust-masking
    prediction, NO_LABEL for maps with NaN or inf, unless labels were given);
    ``index`` (B,): into the patch windows, the largest certified one, -1 for
    none (certified for the configured patch: ``index == len(windows) - 1``);
    ``strongest``: per map, :func:`strongest_windows` (only when asked for).
    """

    labels: np.ndarray
    index: np.ndarray
    strongest: list[Optional[tuple[int, int, int]]]


def certify_batch(
    u: np.ndarray,
    window: Pair,
    patch_windows: Sequence[Pair],
    thres: float,
    clip: Optional[float],
    *,
    labels: Optional[np.ndarray] = None,
    strongest: bool = False,
    wrap: bool = False,
) -> BatchCertificate:
    """Labels and largest certified patch windows of checked maps u (B, H, W, C).

    Per chunk of maps, one :class:`~.masking.MaskEvidence` serves the
    prediction, the certificate for the largest patch window (first, so a
    certified map costs one certificate) and :func:`search_largest` over the
    smaller ones for the maps it refutes. The arguments must be checked
    already (:func:`largest_certified` is the checked entry point). ``wrap``
    as in :func:`per_map`.
    """
    last = len(patch_windows) - 1
    out_labels = np.empty(u.shape[0], dtype=np.int64)
    index = np.full(u.shape[0], -1, dtype=np.int64)
    found: list[Optional[tuple[int, int, int]]] = []
    with np.errstate(invalid="ignore", over="ignore"):
        for part in batch_slices(u):
            evidence = MaskEvidence(u[part], window, thres, clip, wrap)
            if labels is None:
                out_labels[part] = evidence.predictions()
                # Maps with NaN or inf (NO_LABEL) are never certified; class 0 stands in.
                ys = np.maximum(out_labels[part], 0)
            else:
                ys = out_labels[part] = labels[part]
            if strongest:
                found += strongest_windows(evidence)
            ok = certify_evidence(evidence, ys, patch_windows[last])
            best = np.where(ok, last, -1)
            rest = np.flatnonzero(evidence.finite & ~ok)
            if rest.size and last > 0:
                part_evidence = evidence if rest.size == ok.size else evidence.subset(rest)
                best[rest] = search_largest(part_evidence, ys[rest], patch_windows[:last])
            index[part] = best
    return BatchCertificate(out_labels, index, found)


def search_largest(evidence: MaskEvidence, labels: np.ndarray, patch_windows: Sequence[Pair]) -> np.ndarray:
    """Index (B,) of the largest certified window in ``patch_windows``, -1 for none.

    Certification is monotone in the patch under a fixed mask (README, "The
    math"), so each map keeps a bracket (certified lo, refuted hi): the
    smallest window is tried first (maps far from certified stop there), then
    the bracket is halved, about 1 + log2(n) certificates instead of up to n
    for a plain scan. Every certificate reuses ``evidence`` (totals, window sums).
    """
    lo = np.full(labels.shape[0], -1, dtype=np.int64)
    hi = np.full(labels.shape[0], len(patch_windows), dtype=np.int64)
    first = True
    while True:
        open_ = np.flatnonzero(hi - lo > 1)
        if open_.size == 0:
            return lo
        mid = np.zeros(open_.size, dtype=np.int64) if first else (lo[open_] + hi[open_]) // 2
        first = False
        for k in np.unique(mid):  # one certificate per distinct window
            maps = open_[mid == k]
            part = evidence if maps.size == labels.shape[0] else evidence.subset(maps)
            ok = certify_evidence(part, labels[maps], patch_windows[k])
            lo[maps[ok]] = k
            hi[maps[~ok]] = k


def strongest_windows(evidence: MaskEvidence) -> list[Optional[tuple[int, int, int]]]:
    """Per map, (class c, top, left) of the window masking removes from the class
    with the largest total evidence S_c, or None when it removes nothing there
    (``S_c = 0`` or ``M_c <= T S_c``).

    c is what the undefended BagNet would answer; when a patch fools it, c is
    the patch's class and this window is where the patch put its evidence, so
    it is the box worth showing. Its window sums are already in ``evidence``.
    """
    classes, totals, sums = evidence.strongest()
    found: list[Optional[tuple[int, int, int]]] = []
    for n in range(sums.shape[0]):
        flat = int(np.argmax(sums[n]))
        total, m = float(totals[n]), float(sums[n].flat[flat])
        if not (np.isfinite(m) and total > 0 and exceeds_fraction(np.array(m), np.array(total),
                                                                  evidence.thres)):
            found.append(None)
            continue
        top, left = np.unravel_index(flat, sums.shape[1:3])
        found.append((int(classes[n]), int(top), int(left)))
    return found


# --------------------------------------------------------------------------
# The computation.

@dataclass
class _LabelSide:
    """Everything about class y of one chunk; position arrays are (B, H-pa+1, W-pb+1)."""

    table: np.ndarray      # integral image of v[..., y], (B, H+1, W+1)
    windows: np.ndarray    # mask window sums of v[..., y], (B, H-a+1, W-b+1)
    t: np.ndarray          # S_y - sum v[P, y]
    no_overlap: np.ndarray  # best mask window sum of v[..., y] not overlapping P
    cheap: np.ndarray      # t - M_y <= lower bound
    cap: np.ndarray        # >= lower bound
    wrap: bool = False     # columns wrap around (``table`` then extends b - 1 columns past W)


def _label_side(table: np.ndarray, windows: np.ndarray, mask: Pair, patch: Pair,
                thres: float, wrap: bool = False) -> _LabelSide:
    (a, b), (pa, pb) = mask, patch
    total = table[:, -1, -1]
    # A patch the size of the mask covers exactly the windows' cells.
    t = total[:, None, None] - (windows if (pa, pb) == (a, b) else box_sums(table, pa, pb, wrap))
    cheap = t - windows.max(axis=(1, 2))[:, None, None]
    no_overlap = _no_overlap_max(windows, mask, patch, wrap)
    # lower <= t - OV <= S_y - (best window containing P); and when M0 is
    # used (T = 0, or already the non-overlapping windows beat T t),
    # lower = t - M0 <= t - no_overlap.
    cap = total[:, None, None] - containing_max(windows, a, b, pa, pb, wrap)
    if wrap:  # the exact lower bound reads corners up to b - 1 columns past the end
        table = wrapped(table, b - 1)
    uses_m0 = _uses_m0(no_overlap, t, thres)
    cap = np.minimum(cap, np.where(uses_m0, t - no_overlap, np.inf))
    return _LabelSide(table, windows, t, no_overlap, cheap, cap, wrap)


def _no_overlap_max(windows: np.ndarray, mask: Pair, patch: Pair, wrap: bool = False) -> np.ndarray:
    """Best window sum (B, H-pa+1, W-pb+1) among mask windows not overlapping P.

    A window misses P iff it lies wholly above, below, left or right of it:
    prefix / suffix maxima of the window grid's row and column maxima.
    ``wrap`` (columns wrap, W window columns and W patch columns): beside
    P's columns j .. j + pb - 1 lie the windows starting at j + pb .. j + W - b
    (mod W), a sliding maximum over the column maxima taken twice.
    """
    (a, b), (pa, pb) = mask, patch
    batch, rows, cols = windows.shape
    edge = np.full((batch, 1), -np.inf)
    row_max, col_max = windows.max(axis=2), windows.max(axis=1)
    above = np.concatenate([edge, np.maximum.accumulate(row_max, axis=1)], axis=1)
    below = np.concatenate([np.maximum.accumulate(row_max[:, ::-1], axis=1)[:, ::-1], edge], axis=1)
    left = np.concatenate([edge, np.maximum.accumulate(col_max, axis=1)], axis=1)
    right = np.concatenate([np.maximum.accumulate(col_max[:, ::-1], axis=1)[:, ::-1], edge], axis=1)
    i = np.arange(rows + a - pa)  # patch rows: H - pa + 1 = rows + a - pa
    j = np.arange(cols + b - pb)
    vertical = np.maximum(above[:, np.maximum(i - a + 1, 0)], below[:, np.minimum(i + pa, rows)])
    horizontal = np.maximum(left[:, np.maximum(j - b + 1, 0)], right[:, np.minimum(j + pb, cols)])
    if wrap:
        beside = cols - b - pb + 1  # window starts clear of P
        horizontal = np.full((batch, cols), -np.inf)
        if beside > 0:
            twice = np.concatenate([col_max, col_max], axis=1)
            run = twice[:, : 2 * cols - beside + 1].copy()
            for shift in range(1, beside):
                np.maximum(run, twice[:, shift : shift + run.shape[1]], out=run)
            horizontal = run[:, (np.arange(cols) + pb) % cols]
    return np.maximum(vertical[:, :, None], horizontal[:, None, :])


def own_labels(evidence: MaskEvidence) -> np.ndarray:
    """Each map's robust-masking prediction (B,), class 0 standing in for
    maps with NaN or inf (which :func:`certify_evidence` never certifies)."""
    return np.maximum(evidence.predictions(), 0)


def certify_evidence(evidence: MaskEvidence, y: np.ndarray, patch: Pair) -> np.ndarray:
    """Certificates (B,) of labels ``y`` (B,) against every (pa, pb) ``patch``
    under the evidence's mask. Maps with NaN or inf are never certified.

    Only the classes that can matter get window sums: class y, and those
    whose total can reach y's smallest cheap lower bound. Those are bounded
    in two steps: a map refuted by the best-ranked few is refuted by all
    (more classes only raise the upper bound), so most uncertified maps
    never need the rest.
    """
    mask, thres = evidence.mask, evidence.thres
    side = _label_side(*evidence.label(y), mask, patch, thres, evidence.wrap)
    count = _candidates(evidence, y, side.cheap.min(axis=(1, 2)))
    first = min(count, _FIRST_BOUNDED)
    certified = _decide(side, _rival_gaps(evidence, y, first, patch), mask, patch, thres)
    if count > first and certified.any():
        certified = _decide(side, _rival_gaps(evidence, y, count, patch), mask, patch, thres)
    return certified & evidence.finite


def _candidates(evidence: MaskEvidence, y: np.ndarray, floor: np.ndarray) -> int:
    """How many ranked classes c != y (the most over the maps) can reach a lower bound.

    A class with ``S_c / (1 - T) < floor`` is below every lower bound at
    every position (``floor`` is the smallest cheap lower bound), so it
    cannot refute; ranked by total, the others form a prefix of the ranking
    once y is skipped. Bounding more classes than that changes no verdict,
    for the same reason. The float product gets a generous slack: it only
    prunes.
    """
    reach = (1.0 - evidence.thres) * floor
    return reaching(evidence, y, reach - np.abs(reach) * 1e-9 - 1.0)


def reaching(evidence: MaskEvidence, y: np.ndarray, least: np.ndarray) -> int:
    """How many classes c != y (the most over the maps) have a total (over-estimated)
    of at least ``least`` (B,): ranked by total, they are a prefix of the ranking
    once y is skipped, so bounding that many best-ranked classes covers them."""
    candidate = evidence.totals >= least[:, None]
    candidate[np.arange(y.shape[0]), y] = False
    return int(candidate.sum(axis=1).max(initial=0))


def _rival_gaps(evidence: MaskEvidence, y: np.ndarray, count: int, patch: Pair, rank: int = 1) -> np.ndarray:
    """Largest (the ``rank``-th largest) ``S_c - max_{W >= P} sum v[W, c]`` (B, H-pa+1,
    W-pb+1) over the ``count`` best-ranked classes c != y: the upper bound
    times (1 - T), exact (the division is left to :func:`.grid.beats`);
    -inf where fewer than ``rank`` such classes exist."""
    batch, height, width, classes = evidence.u.shape
    (a, b), (pa, pb) = evidence.mask, patch
    if count == 0:
        return np.full((batch, height - pa + 1, width if evidence.wrap else width - pb + 1), -np.inf)
    k = count + 1  # y may be among them
    index, exact, windows = evidence.ranked(k)
    if index.shape[1] > 2 * k:  # bound only the ranked classes asked for
        if index.shape[1] < classes:  # a ranked prefix
            index, exact, windows = index[:, :k], exact[:, :k], windows[..., :k]
        else:  # all classes, in class order
            index = evidence.order[:, :k]
            exact = np.take_along_axis(exact, index, axis=1)
            windows = np.take_along_axis(windows, index[:, None, None, :], axis=3)
    # y is no rival of itself: its gap becomes -inf at every position.
    others = np.where(index == y[:, None], -np.inf, exact)
    gap = others[:, None, None, :] - containing_max(windows, a, b, pa, pb, evidence.wrap)
    if rank == 1:
        return class_max(gap)
    if gap.shape[3] < rank:
        return np.full(gap.shape[:3], -np.inf)
    return np.partition(gap, gap.shape[3] - rank, axis=3)[..., gap.shape[3] - rank]


def _uses_m0(best: np.ndarray, t: np.ndarray, thres: float) -> np.ndarray:
    """Where the lower bound is ``t - M0`` (T = 0, or ``M0 > T t`` exactly)."""
    if thres == 0.0:
        return np.ones(np.shape(best), dtype=bool)
    return exceeds_fraction(best, t, thres)


def _decide(side: _LabelSide, gap: np.ndarray, mask: Pair, patch: Pair,
            thres: float) -> np.ndarray:
    """Certificates (B,): cheap tests first, the exact lower bound where they disagree."""
    refuted = np.asarray((~beats(side.cap, gap, thres)).any(axis=(1, 2)))
    unsure = ~beats(side.cheap, gap, thres)
    undecided = unsure & ~refuted[:, None, None]
    n, i, j = np.nonzero(undecided)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("positions: %d, cheap test undecided: %d, exact bound: %d",
                  unsure.size, int(unsure.sum()), n.size)
    if n.size:
        lower = _exact_lower(side, n, i, j, mask, patch, thres)
        failed = ~beats(lower, gap[n, i, j], thres)
        refuted[n[failed]] = True
    return ~refuted


def _exact_lower(side: _LabelSide, n: np.ndarray, i: np.ndarray, j: np.ndarray,
                 mask: Pair, patch: Pair, thres: float) -> np.ndarray:
    """Exact lower bound of y at the patch positions (n, i, j), shape (F,).

    ``M0`` is the larger of the best window not overlapping P and ``OV``, the
    best overlapping window with its part inside P removed; each such part is
    a rectangle whose corners lie in the (pa + 1) x (pb + 1) block of the
    integral image at P's corner.
    """
    (a, b), (pa, pb) = mask, patch
    # Overlapping windows start at rows i - a + 1 .. i + pa - 1 (columns
    # alike): pad the window grid with -inf so every offset is an index
    # (wrapping columns: with the grid's own columns, so offsets go round).
    # A window met at two offsets (b + pb - 1 > W, wrapping) is read at
    # each with a part of its true overlap with P: OV only grows, the
    # lower bound only falls.
    padded = side.windows
    if side.wrap:
        padded = np.pad(padded, ((0, 0), (0, 0), (b - 1, b - 1)), mode="wrap")
    padded = np.pad(padded, ((0, 0), (a - 1, a - 1), (0, 0) if side.wrap else (b - 1, b - 1)),
                    constant_values=-np.inf)
    dr = np.arange(a + pa - 1) - (a - 1)
    dc = np.arange(b + pb - 1) - (b - 1)
    r0, r1 = np.maximum(0, dr)[:, None], np.minimum(pa, dr + a)[:, None]
    c0, c1 = np.maximum(0, dc)[None, :], np.minimum(pb, dc + b)[None, :]
    block_r, block_c = np.arange(pa + 1)[None, :, None], np.arange(pb + 1)[None, None, :]
    out_r, out_c = np.arange(dr.size)[None, :, None], np.arange(dc.size)[None, None, :]

    lower = np.empty(n.size, dtype=np.float64)
    step = max(1, _EXACT_ELEMENTS // (dr.size * dc.size))
    for s in range(0, n.size, step):
        nn, ii, jj = n[s : s + step], i[s : s + step], j[s : s + step]
        n3, i3, j3 = nn[:, None, None], ii[:, None, None], jj[:, None, None]
        corners = side.table[n3, i3 + block_r, j3 + block_c]
        inside = (corners[:, r1, c1] - corners[:, r0, c1]) - corners[:, r1, c0] + corners[:, r0, c0]
        overlap = (padded[n3, i3 + out_r, j3 + out_c] - inside).max(axis=(1, 2))
        best = np.maximum(side.no_overlap[nn, ii, jj], overlap)
        t = side.t[nn, ii, jj]
        uses_m0 = _uses_m0(best, t, thres)
        lower[s : s + step] = np.where(uses_m0, t - best, t - overlap)
    return lower
