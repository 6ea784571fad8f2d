"""Feature-space double masking (PatchCURE's secure pooling), whole batches.

PatchCleanser's double-masking rule applied to the local logits instead of
the pixels (README.md, "The math, in one screen"). Symbols: local logits u (B, H, W, C),
evidence ``v = clip(u, 0, c_h)`` as for robust masking, class totals S (B, C),
the patch window (pa, pb) in cells. The mask set: per axis, k masks of side
``m >= p`` (:func:`geometry.mask_grid`, in cells), listed row-major; every patch
window lies inside at least one mask. With ``W(x)`` the sum of v over a set of
cells x:

- one-mask scores of mask i: ``S - W(m_i)``;
- two-mask scores of masks i, j: ``S - W(m_i) - W(m_j) + W(m_i and m_j)``,
  the evidence outside both (the one-mask scores are the case i = j);
- decision (PatchCleanser Algorithm 1): one prediction per mask; unanimous:
  that label; else, for each mask that disagrees with the first-round
  majority, in list order, its two-mask predictions with every mask: the first
  whose are all its own label wins; else the majority;
- certificate of y: every two-mask prediction (i <= j) is y.

Why the certificate holds: a patch inside mask k cannot change any two-mask
score (k, j), so mask k predicts y in the first round; the output is then y
whether the round is unanimous, a disagreeing mask whose second round agrees
(its pair with k says y) wins, or none does (mask k would have won, being a
disagreer whose every pair says y, unless an earlier winner, also y, did).

Every sum comes from one integral image of the exact grid of :mod:`.grid`
(the rectangle of an intersection, empty or not, is four corners of it), so
every score is an exact integer: predictions break ties toward the lowest
class index literally, and the certificate asks exactly that every pair's
argmax is y (no tolerance). Maps with NaN or inf get :data:`masking.NO_LABEL`
and no certificate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from .errors import PatchGuardError
from .geometry import IntOrPair, MaskGrid, mask_grid
from .grid import Grid, grid_for
from .masking import (
    NO_LABEL,
    batch_slices,
    check_labels,
    check_logits,
    check_params,
    check_window,
    clipped_integral,
    finite_maps,
)

#: PatchCleanser's default: 6 masks per axis (36 masks, 666 pairs).
DEFAULT_MASKS_PER_AXIS = 6
# Two-mask scores (B * M * M * C elements) computed per chunk.
_PAIR_ELEMENTS = 1 << 20


def _intervals(starts: tuple[int, ...], side: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) (n, n): the intersection of the runs [s_i, s_i + side) and
    [s_j, s_j + side), empty (lo = hi) when they do not meet."""
    s = np.asarray(starts, dtype=np.int64)
    lo = np.maximum(s[:, None], s[None, :])
    hi = np.maximum(lo, np.minimum(s[:, None], s[None, :]) + side)
    return lo, hi


def two_mask_scores(table: np.ndarray, masks: MaskGrid) -> np.ndarray:
    """Two-mask scores (B, M, M, C) from an integral image (B, H + 1, W + 1, C).

    Entry (i, j, c) is ``S_c - W(m_i) - W(m_j) + W(m_i and m_j)``; the
    diagonal holds the one-mask scores. Rows and columns of an intersection
    are independent, so all M^2 rectangles are four gathers of the table.
    """
    rows, cols = masks.rows, masks.cols
    (rlo, rhi), (clo, chi) = _intervals(rows.starts, rows.side), _intervals(cols.starts, cols.side)
    r0, r1 = rlo[:, :, None, None], rhi[:, :, None, None]
    c0, c1 = clo[None, None], chi[None, None]
    inter = table[:, r1, c1] - table[:, r0, c1] - table[:, r1, c0] + table[:, r0, c0]
    batch, nr, _, nc, _, classes = inter.shape
    # (B, r_i, r_j, c_i, c_j, C) -> (B, i, j, C) with i = (r_i, c_i) row-major.
    inter = inter.transpose(0, 1, 3, 2, 4, 5).reshape(batch, nr * nc, nr * nc, classes)
    # A copy: the diagonal is a view of the buffer the scores are written into.
    single = np.diagonal(inter, axis1=1, axis2=2).transpose(0, 2, 1).copy()  # (B, M, C)
    total = table[:, -1, -1]
    scores = inter  # S - W_i - W_j + I_ij, in place
    scores -= single[:, :, None, :]
    scores -= single[:, None, :, :]
    scores += total[:, None, None, :]
    return scores


def decide_with_mask(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PatchCleanser's decision (B,) and the mask (B,) whose second round
    decided it (-1 when the first round was unanimous or the majority won)."""
    batch, _, _, classes = scores.shape
    pair = scores.argmax(axis=3)                                  # (B, M, M)
    first = np.diagonal(pair, axis1=1, axis2=2)                   # (B, M)
    votes = np.zeros((batch, classes), dtype=np.int64)
    np.add.at(votes, (np.arange(batch)[:, None], first), 1)
    majority = votes.argmax(axis=1)                               # ties: lowest class
    agrees = (pair == first[:, :, None]).all(axis=2)              # second round unanimous
    winner = agrees & (first != majority[:, None])
    index = winner.argmax(axis=1)                                 # first in list order
    found = winner.any(axis=1)
    labels = np.where(found, first[np.arange(batch), index], majority)
    return labels, np.where(found, index, -1)


def pair_margins(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smallest margin (B,) over all pairs of y's two-mask score over the best
    other class (+inf with a single class: nothing to beat)."""
    batch, _, _, classes = scores.shape
    rows = np.arange(batch)
    own = scores[rows, :, :, y]                                   # (B, M, M)
    if classes == 1:
        return np.full(batch, np.inf)
    others = scores.copy()
    others[rows, :, :, y] = -np.inf
    return (own - others.max(axis=3)).min(axis=(1, 2))


@dataclass
class DoubleMaskEvidence:
    """Two-mask scores of a chunk of maps, shared by the prediction, the
    certificate and the per-frame readouts. Scores are exact grid integers
    (:mod:`.grid`); ``grid.to_logits`` reports them in logit units."""

    scores: np.ndarray      # (B, M, M, C), grid units
    finite: np.ndarray      # (B,) maps without NaN or inf
    grid: Grid

    @classmethod
    def of(cls, u: np.ndarray, masks: MaskGrid, clip: Optional[float]) -> "DoubleMaskEvidence":
        grid = grid_for(u.shape, clip)
        with np.errstate(invalid="ignore", over="ignore"):  # 1e300 * unit / c_h: inf, saturated
            table = clipped_integral(u, grid)
            scores = two_mask_scores(table, masks)
        return cls(scores, finite_maps(u), grid)

    def predictions(self) -> np.ndarray:
        return self.decision()[0]

    def decision(self) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (B,) (:data:`NO_LABEL` for maps with NaN/inf) and the
        deciding mask (B,) (-1: none, see :func:`decide_with_mask`)."""
        labels, mask = decide_with_mask(np.where(np.isfinite(self.scores), self.scores, 0.0))
        labels = np.where(self.finite, labels, NO_LABEL).astype(np.int64)
        return labels, np.where(self.finite, mask, -1)

    def margins(self, y: np.ndarray) -> np.ndarray:
        """Smallest two-mask margin of y over the best other class (B,), in
        logit units of evidence (NaN for maps with NaN/inf). For reports: a
        margin of exactly 0 is certified when every tied rival has a higher
        class index; :meth:`certified` decides on the integers."""
        with np.errstate(invalid="ignore"):
            margin = pair_margins(self.scores, np.maximum(y, 0))
        return np.where(self.finite, self.grid.to_logits(margin), np.nan)

    def certified(self, y: np.ndarray) -> np.ndarray:
        """(B,): every two-mask prediction (exact argmax, ties to the lowest index) is y."""
        pair = self.scores.argmax(axis=3)
        return self.finite & (y >= 0) & (pair == y[:, None, None]).all(axis=(1, 2))

    def label_scores(self, y: np.ndarray) -> np.ndarray:
        """One-mask scores (B, C) behind label y, logit units: those of the first
        mask whose first-round prediction is y (the mask set's first when none is)."""
        first = np.diagonal(self.scores.argmax(axis=3), axis1=1, axis2=2)
        index = (first == y[:, None]).argmax(axis=1)
        rows = np.arange(self.scores.shape[0])
        return self.grid.to_logits(self.scores[rows, index, index])


def pair_slices(u: np.ndarray, masks: MaskGrid) -> list[slice]:
    """Slices of u's batch whose two-mask scores (M * M * C per map) fit one chunk."""
    return batch_slices(u, masks.count * masks.count * u.shape[3], _PAIR_ELEMENTS)


def _prepare(local_logits: np.ndarray, patch_window: IntOrPair, masks_per_axis: IntOrPair,
             clip: Optional[float], labels: Optional[np.ndarray] = None,
             ) -> tuple[np.ndarray, Optional[np.ndarray], Iterator[tuple[slice, "DoubleMaskEvidence"]]]:
    """Checked u and labels, and the evidence of u chunk by chunk: (rows, evidence of those rows)."""
    u = check_logits(local_logits)
    _, clip = check_params(0.0, clip)
    window = check_window(patch_window, u.shape, "patch window")
    try:
        masks = mask_grid(u.shape[1:3], window, masks_per_axis)
    except PatchGuardError as exc:
        raise PatchGuardError(f"double masking: {exc}") from None
    y = check_labels(labels, u.shape[0], u.shape[3])
    parts = ((part, DoubleMaskEvidence.of(u[part], masks, clip)) for part in pair_slices(u, masks))
    return u, y, parts


def double_masking(
    local_logits: np.ndarray,
    patch_window: IntOrPair,
    *,
    masks_per_axis: IntOrPair = DEFAULT_MASKS_PER_AXIS,
    clip: Optional[float] = None,
) -> np.ndarray:
    """Double-masking predictions (B,) int64 of u (B, H, W, C) against a
    ``patch_window`` (a, b) of cells; :data:`NO_LABEL` for maps with NaN/inf."""
    u, _, parts = _prepare(local_logits, patch_window, masks_per_axis, clip)
    out = np.empty(u.shape[0], dtype=np.int64)
    for part, evidence in parts:
        out[part] = evidence.predictions()
    return out


def double_masking_certified(
    local_logits: np.ndarray,
    patch_window: IntOrPair,
    *,
    masks_per_axis: IntOrPair = DEFAULT_MASKS_PER_AXIS,
    clip: Optional[float] = None,
    labels: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and certificates (B,) in one pass over the two-mask scores
    (the certificate is for ``labels``, or each map's own prediction: every
    two-mask prediction is that label)."""
    u, y, parts = _prepare(local_logits, patch_window, masks_per_axis, clip, labels)
    predictions = np.empty(u.shape[0], dtype=np.int64)
    certified = np.zeros(u.shape[0], dtype=bool)
    for part, evidence in parts:
        predictions[part] = evidence.predictions()
        certified[part] = evidence.certified(predictions[part] if y is None else y[part])
    return predictions, certified
