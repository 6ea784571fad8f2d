"""Top-k certificates and certification margins for robust masking.

Algorithm 2's bounds (README.md, "The math, in one screen") at every (pa, pb) patch position P
under the (a, b) mask: ``lower(P)`` of label y (exact, every position) and
``upper_c(P)`` of every class c != y. Then (README.md, "The math, in one screen"):

- **top-k**: y stays among the k highest masked scores under every patch iff
  at every P, ``lower(P)`` beats the k-th largest ``upper_c(P)`` (fewer than
  k classes can then reach y's score); k = 1 is the ordinary certificate;
- **margin**: ``min_P (lower(P) - k-th largest upper_c(P))`` in logit
  units of evidence: how far the worst patch is from pushing y out
  (negative: it can). For reports only.

The certificate is decided exactly, as the ordinary one (:mod:`.certificate`,
whose decision it reuses with the k-th largest rival gap in place of the
largest): on the integers of the grid, T through exact rational comparisons,
and an exact tie is never a certificate; k = 1 gives the same verdicts.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .certificate import _decide, _exact_lower, _label_side, _rival_gaps, per_map, reaching
from .errors import PatchGuardError
from .geometry import IntOrPair, Pair
from .masking import MaskEvidence

# Up to this many classes the k-th rival gap bounds every class (no pruning).
_ALL_CLASSES = 32


def check_top_k(top_k: int) -> int:
    """k >= 1 (an int)."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise PatchGuardError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


def _kth_gap(evidence: MaskEvidence, y: np.ndarray, patch: Pair, k: int) -> np.ndarray:
    """The k-th largest rival gap ``S_c - max_{W >= P} sum v[W, c]`` (the upper
    bound times 1 - T; exact grid integers) among the classes c != y at every
    (pa, pb) position, (B, P1, P2); -inf where fewer than k other classes exist.

    Only the classes that can be among the k largest get window sums: every
    gap of c lies in ``[S_c - M_c, S_c]`` (``M_c``: c's largest mask window,
    which contains any patch position's windows; window sums are >= 0), so the
    k-th largest ``S_c - M_c`` of some classes c != y, L, is at most the k-th
    largest gap at every position, and a class with ``S_c < L`` cannot change
    it. Ranked by total, the others are a prefix of the ranking once y is skipped.
    """
    batch, height, width, classes = evidence.u.shape
    if k >= classes:
        return np.full((batch, height - patch[0] + 1, width - patch[1] + 1), -np.inf)
    if classes <= _ALL_CLASSES:  # bounding them all costs less than choosing
        return _rival_gaps(evidence, y, classes - 1, patch, k)
    index, exact, _ = evidence.ranked(k + 1)
    floor = np.where(index == y[:, None], -np.inf, exact - evidence.largest())
    least = np.partition(floor, floor.shape[1] - k, axis=1)[:, floor.shape[1] - k]
    count = max(reaching(evidence, y, least), k)
    return _rival_gaps(evidence, y, min(count, classes - 1), patch, k)


def top_k_certified(evidence: MaskEvidence, y: np.ndarray, patch: Pair, k: int) -> np.ndarray:
    """(B,): at every position y's lower bound beats the k-th largest rival
    upper bound, exactly (then fewer than k classes can reach y's score)."""
    side = _label_side(*evidence.label(y), evidence.mask, patch, evidence.thres)
    gap = _kth_gap(evidence, y, patch, k)
    return _decide(side, gap, evidence.mask, patch, evidence.thres) & evidence.finite


def top_k_margins(evidence: MaskEvidence, y: np.ndarray, patch: Pair, k: int = 1) -> np.ndarray:
    """Smallest ``lower - k-th largest other upper`` over positions (B,), in
    logit units; +inf when fewer than k other classes exist; NaN for maps
    with NaN/inf. A report: decisions come from :func:`top_k_certified`.

    The exact lower bound is computed only where it can be the minimum: the
    cheap bounds ``cheap <= lower <= cap`` of :mod:`.certificate` bracket the
    margin at each position, and a position whose bracket starts above the
    smallest bracket end cannot hold the minimum.
    """
    side = _label_side(*evidence.label(y), evidence.mask, patch, evidence.thres)
    kth = _kth_gap(evidence, y, patch, k) / (1.0 - evidence.thres)
    low, high = side.cheap - kth, side.cap - kth
    margin = high.min(axis=(1, 2))
    n, i, j = np.nonzero(low < margin[:, None, None])
    if n.size:
        exact = _exact_lower(side, n, i, j, evidence.mask, patch, evidence.thres) - kth[n, i, j]
        np.minimum.at(margin, n, exact)
    return np.where(evidence.finite, evidence.grid.to_logits(margin), np.nan)


def certification_margin(
    local_logits: np.ndarray,
    window: IntOrPair,
    *,
    top_k: int = 1,
    patch_window: Optional[IntOrPair] = None,
    thres: float = 0.0,
    clip: Optional[float] = None,
    labels: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Margins (B,) float64 in logit units of evidence (see the module
    docstring); NaN for maps with NaN or inf. Divide by H * W for mean-logit units."""
    k = check_top_k(top_k)
    return per_map(local_logits, window, patch_window, thres, clip, labels,
                   lambda evidence, y, patch: top_k_margins(evidence, y, patch, k), np.float64)
