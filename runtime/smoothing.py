"""Aggregations of view logits with sound certificates: DS, Mask-DS, crop voting.

README.md, "View defenses". An ordinary classifier scores V views of a frame; its
logits are (B, V, C). Ties always go to the lowest class index.

- **Votes** (DS, Levine & Feizi 2020; crop voting): view v votes its argmax
  class when its softmax confidence is at least ``theta``, else
  :data:`NO_VOTE`; a view whose logits hold NaN or inf never votes (a
  patch that drives a view to inf only silences it, which the certificate
  already allows for). ``n_c`` counts the votes for c; the prediction is
  ``argmax n``. A patch changes at most ``delta`` views, each of which can
  move a vote from y to c, so y is certified iff for every c != y:
  ``n_y > n_c + 2 delta``, or ``n_y = n_c + 2 delta`` and ``y < c``.
- **delta**: bands ``b`` columns wide, one per column, wrapping around: a
  patch ``p`` columns wide meets ``min(p + b - 1, W)`` of them
  (:func:`band_delta`); crops of side ``c`` on a grid of stride ``t``: the
  exact largest number of crops one patch position meets, counted per axis
  (the grid is a product, so the largest count is the product of the axis
  maxima) (:func:`crop_delta`).
- **Mask-DS** (PatchGuard): the band confidences, softmax (B, 1, V, C)
  (those below ``theta`` zeroed), are a map of "local logits" for robust
  masking with a 1-D window of ``min(p + b - 1, W)`` bands that wraps
  around (:func:`band_confidences`, then :mod:`.masking` /
  :mod:`.certificate` with ``wrap=True``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .ablation import crop_starts
from .detection import softmax
from .errors import PatchGuardError
from .geometry import IntOrPair, as_pair
from .masking import check_labels

#: A view that does not vote (confidence below theta, or non-finite logits).
NO_VOTE = -1


def check_view_logits(logits: np.ndarray) -> np.ndarray:
    """View logits as a float array (B, V, C), or a PatchGuardError."""
    z = np.asarray(logits)
    if z.ndim != 3 or min(z.shape[1:]) < 1:
        raise PatchGuardError(f"view logits must have shape (B, V, C) with V, C >= 1, got {z.shape}")
    if z.dtype.kind not in "fiu":
        raise PatchGuardError(f"view logits must be numbers, got dtype {z.dtype}")
    return z


def ds_votes(logits: np.ndarray, theta: float = 0.0) -> np.ndarray:
    """Each view's vote (B, V) int64: argmax of its logits if its softmax
    confidence is at least ``theta``, else :data:`NO_VOTE`."""
    z = check_view_logits(logits)
    theta = check_theta(theta)
    p = softmax(z)
    finite = np.isfinite(z).all(axis=-1)  # a view with NaN or inf logits never votes
    # The argmax of the logits, not of p: equal logits stay equal (ties to
    # the lowest index) however the softmax rounds.
    top = np.where(finite[..., None], z, 0).argmax(axis=-1)
    confident = np.take_along_axis(p, top[..., None], axis=-1)[..., 0] >= theta
    return np.where(finite & confident, top, NO_VOTE).astype(np.int64)


def check_theta(theta: float) -> float:
    try:
        theta = float(theta)
    except (TypeError, ValueError):
        raise PatchGuardError(f"theta (vote threshold) must be a number in [0, 1], got {theta!r}") from None
    if not 0.0 <= theta <= 1.0:
        raise PatchGuardError(f"theta (vote threshold) must be in [0, 1], got {theta}")
    return theta


def ds_counts(votes: np.ndarray, classes: int) -> np.ndarray:
    """Votes per class (B, C) int64 from votes (B, V) (:data:`NO_VOTE` ignored)."""
    votes = np.asarray(votes, dtype=np.int64)
    batch = votes.shape[0]
    flat = np.where(votes >= 0, votes + classes * np.arange(batch)[:, None], batch * classes)
    counts = np.bincount(flat.ravel(), minlength=batch * classes + 1)[: batch * classes]
    return counts.reshape(batch, classes).astype(np.int64)


def ds_predict(counts: np.ndarray) -> np.ndarray:
    """Majority of the votes (B,): argmax of n (B, C), ties to the lowest class."""
    return np.asarray(counts).argmax(axis=1).astype(np.int64)


def ds_margin(counts: np.ndarray, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """The largest delta (B,) for which the label (default: the prediction)
    stays certified; -1 where the label does not even win on the clean votes.

    For each c != y the test ``n_y > n_c + 2 delta`` (or equality with
    y < c) holds for delta <= (n_y - n_c - 1) // 2 (resp. (n_y - n_c) // 2).
    """
    n = np.asarray(counts, dtype=np.int64)
    batch, classes = n.shape
    y = check_labels(labels, batch, classes)
    if y is None:
        y = ds_predict(n)
    rows = np.arange(batch)
    gap = n[rows, y][:, None] - n                       # n_y - n_c, (B, C)
    above = np.arange(classes)[None, :] > y[:, None]    # y < c: equality allowed
    limit = np.where(above, gap, gap - 1) // 2          # floor division, negative when lost
    limit[rows, y] = np.iinfo(np.int64).max  # no rival: a single class is always certified
    return np.maximum(limit.min(axis=1), -1)


def ds_certify(counts: np.ndarray, delta: int | np.ndarray,
               labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Certificates (B,): the label (default: the prediction) wins against a
    patch that changes at most ``delta`` views (an int, or (B,))."""
    delta = np.asarray(delta, dtype=np.int64)
    if (delta < 0).any():
        raise PatchGuardError(f"delta (views a patch can change) must be >= 0, got {delta.min()}")
    return ds_margin(counts, labels) >= delta


# --------------------------------------------------------------------------
# How many views one patch can change.

def band_delta(patch_width: int, band: int, width: int) -> int:
    """Bands (of ``width`` wrapping ones, ``band`` columns each) that a patch
    ``patch_width`` columns wide meets: ``min(p + b - 1, W)``."""
    p, b, w = int(patch_width), int(band), int(width)
    if p < 1 or not 1 <= b <= w:
        raise PatchGuardError(f"need patch width >= 1 and 1 <= band <= {w}, got p={p}, b={b}")
    return min(p + b - 1, w)


def crop_delta(size: Sequence[int], crop: int, stride: int, patch: IntOrPair) -> int:
    """The largest number of crops (side ``crop``, grid ``stride``, see
    :func:`.ablation.crop_starts`) that one patch of ``patch`` (rows, columns)
    model pixels meets, over every patch position inside the image."""
    pa, pb = as_pair(patch, "patch")
    counts = [
        _axis_hits(int(n), crop, stride, min(p, int(n))) for n, p in zip(size, (pa, pb))
    ]
    return counts[0] * counts[1]


def _axis_hits(length: int, crop: int, stride: int, p: int) -> int:
    """Most crop intervals [s, s + crop) one interval [i, i + p) meets, over i."""
    starts = np.asarray(crop_starts(length, crop, stride))
    i = np.arange(length - p + 1)[:, None]
    meets = (starts[None, :] < i + p) & (i < starts[None, :] + crop)
    return int(meets.sum(axis=1).max())


# --------------------------------------------------------------------------
# Mask-DS.

def band_confidences(logits: np.ndarray, theta: float = 0.0) -> np.ndarray:
    """The Mask-DS map (B, 1, V, C) float64: each band's softmax, with
    confidences below ``theta`` set to 0 (so rivals' small shares do not add
    up over many bands); a band with NaN or inf logits contributes zeros. Each
    entry depends on its own band only, as robust masking requires, and zeros
    are a value a patch could produce anyway."""
    p = softmax(check_view_logits(logits))
    theta = check_theta(theta)
    if theta > 0.0:
        p = np.where(p >= theta, p, 0.0)
    return p[:, None, :, :]


def mask_ds_window(patch_width: int, band: int, width: int) -> tuple[int, int]:
    """The Mask-DS window (1, min(p + b - 1, W)) over the (1, W) band map."""
    return 1, band_delta(patch_width, band, width)
