"""The other aggregations of the same local logits, with sound certificates.

- CBN (Clipped BagNet): ``f = tanh(0.05 u - 1)`` per cell, prediction the
  argmax of the mean. A patch moves each cell of its (a, b) window by at most
  2 per class, so y is certified iff, at every window position P and for
  EVERY class c != y, ``sum_{cells outside P} (f_y - f_c) > 2 |P|``.
  (PatchGuard's script checked only the runner-up class, which is unsound.)
- Majority vote: each cell votes its argmax class, the prediction is the class
  with most votes. With ``out_c(P)`` the votes for c outside P, y is certified
  iff ``out_y(P) > out_c(P) + |P|`` at every P for every c != y.

CBN decides on the exact grid of :mod:`.grid` (``f`` rounded onto integers
in ``[-unit, unit]``; a patch moves a cell by at most ``2 unit`` per class
pair), votes are counts: both are exact, so ties go to the lowest class
index literally and no tolerance is needed. Maps with NaN or inf get
:data:`masking.NO_LABEL` and are never certified. Shapes: u (B, H, W, C),
``window`` the patch window (a, b) in cells.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .geometry import IntOrPair, Pair
from .grid import scores_to_grid
from .masking import NO_LABEL, batch_slices, box_sums, check_labels, check_logits, check_window, finite_maps, integral


def cbn_scores(u: np.ndarray) -> np.ndarray:
    """Per-cell clipped scores ``f = tanh(0.05 u - 1)`` in float64, (B, H, W, C)."""
    return np.tanh(0.05 * np.asarray(u, dtype=np.float64) - 1.0)


def cbn_grid(u: np.ndarray) -> tuple[np.ndarray, int]:
    """CBN scores f of u (B, H, W, C) on the exact grid: integers in
    [-unit, unit] (float64), and the unit. Cell by cell, so the clean and
    an attacked map agree outside the patch."""
    return scores_to_grid(cbn_scores(u), u.shape[1] * u.shape[2])


def cbn_predict(local_logits: np.ndarray) -> np.ndarray:
    """CBN predictions (B,): argmax over c of the mean of f; NO_LABEL for NaN/inf maps."""
    u = check_logits(local_logits)
    out = np.empty(u.shape[0], dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        for part in batch_slices(u):
            out[part] = cbn_grid(u[part])[0].sum(axis=(1, 2)).argmax(axis=1)
    return np.where(finite_maps(u), out, NO_LABEL)


def _certify_inputs(local_logits: np.ndarray, window: IntOrPair, labels: Optional[np.ndarray],
                    predict: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, Pair, np.ndarray]:
    """u, the patch window (a, b) and the labels to certify (``labels``, or ``predict(u)``), checked once."""
    u = check_logits(local_logits)
    window = check_window(window, u.shape)
    y = check_labels(labels, u.shape[0], u.shape[3])
    return u, window, predict(u) if y is None else y


def cbn_certify(
    local_logits: np.ndarray, window: IntOrPair, labels: Optional[np.ndarray] = None
) -> np.ndarray:
    """CBN certificates (B,) against a patch inside any ``window`` of cells.

    ``labels=None`` certifies each map's own CBN prediction. On the grid a
    patch moves each cell's ``f_y - f_c`` by at most ``2 unit``, so the test
    is ``sum outside P (f_y - f_c) > 2 unit |P|``, in exact integers.
    """
    u, (a, b), y = _certify_inputs(local_logits, window, labels, cbn_predict)
    certified = np.zeros(u.shape[0], dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        for part in batch_slices(u):
            ys = np.maximum(y[part], 0)
            scores, unit = cbn_grid(u[part])
            table = integral(scores)
            total = table[:, -1, -1]                               # (B, C)
            outside = total[:, None, None, :] - box_sums(table, a, b)  # (B, P, P, C)
            rows = np.arange(ys.size)
            margin = outside[rows, :, :, ys][..., None] - outside
            margin[rows, :, :, ys] = np.inf
            certified[part] = (margin.min(axis=(1, 2, 3)) > 2.0 * unit * a * b) & (y[part] >= 0)
    return certified & finite_maps(u)


def cell_votes(u: np.ndarray) -> np.ndarray:
    """Each cell's vote (B, H, W): its argmax class, ties to the lowest index."""
    return np.asarray(u).argmax(axis=3)


def vote_predict(local_logits: np.ndarray) -> np.ndarray:
    """Majority-vote predictions (B,); NO_LABEL for NaN/inf maps."""
    u = check_logits(local_logits)
    classes = u.shape[3]
    votes = cell_votes(u).reshape(u.shape[0], -1)
    counts = np.zeros((u.shape[0], classes), dtype=np.int64)
    np.add.at(counts, (np.arange(u.shape[0])[:, None], votes), 1)
    return np.where(finite_maps(u), counts.argmax(axis=1), NO_LABEL)


def vote_certify(
    local_logits: np.ndarray, window: IntOrPair, labels: Optional[np.ndarray] = None
) -> np.ndarray:
    """Majority-vote certificates (B,) with the per-position test (exact integers).

    Only classes that receive a vote somewhere in the chunk (plus the labels)
    can have ``out_c(P) > 0``; the rest share one count, ``out_c(P) = 0``,
    and are not counted one by one.
    """
    u, (a, b), y = _certify_inputs(local_logits, window, labels, vote_predict)
    certified = np.zeros(u.shape[0], dtype=bool)
    for part in batch_slices(u):
        votes = cell_votes(u[part])
        ys = np.maximum(y[part], 0)
        present, compact = np.unique(np.concatenate([ys, votes.ravel()]), return_inverse=True)
        label_col, vote_col = compact[: ys.size], compact[ys.size :].reshape(votes.shape)
        onehot = np.zeros(votes.shape + (present.size,), dtype=np.int64)
        np.put_along_axis(onehot, vote_col[..., None], 1, axis=3)
        table = np.zeros((votes.shape[0], votes.shape[1] + 1, votes.shape[2] + 1, present.size),
                         dtype=np.int64)
        np.cumsum(np.cumsum(onehot, axis=1), axis=2, out=table[:, 1:, 1:])
        outside = table[:, -1, -1][:, None, None, :] - box_sums(table, a, b)
        rows = np.arange(ys.size)
        out_y = outside[rows, :, :, label_col]                      # (B, P, P)
        outside[rows, :, :, label_col] = np.iinfo(np.int64).min // 2
        rival = outside.max(axis=3)
        if present.size < u.shape[3]:
            # A class without a vote has out_c(P) = 0, and the patch can still
            # hand it all |P| cells: it is a rival too.
            np.maximum(rival, 0, out=rival)
        certified[part] = (out_y > rival + a * b).all(axis=(1, 2)) & (y[part] >= 0)
    return certified & finite_maps(u)
