"""Provable detection (PatchGuard++, Xiang & Mittal 2021), whole batches.

Symbols (README.md, "The math, in one screen"): local logits u (B, H, W, C), *unclipped*;
class totals S (B, C); mean logits ``g = S / (H W)``; for every position of
the (a, b) patch window w, ``g_w = (S - W(w)) / (H W)`` (the window's cells
removed), its prediction ``argmax g_w`` and softmax confidence
``max softmax(g_w)``.

- Output ``argmax g``; **alert** when some window predicts a class other than
  the output with confidence ``> tau``.
- **Certified detection** of y: ``argmax g = y`` and every window predicts y
  with confidence ``> tau``. Then no patch inside a window can produce a
  wrong label without an alert: the window covering the patch still predicts
  y with confidence > tau (its cells are gone), so any other output alerts.

Both use the same strict inequality ``> tau`` (PatchGuard++'s public code
differs at exactly tau). Exactness: u is mapped cell by cell onto a signed
version of the grid of :mod:`.grid` (``floor`` of the positive part minus
``floor`` of the negative part, saturated at +-2^20 logits), so every S and
``S - W(w)`` is an exact integer: predictions and ties are decided on them,
and a window whose cells a patch cannot reach has the same integers, hence
bit for bit the same softmax confidence, in the clean and the attacked map.
Maps with NaN or inf get :data:`masking.NO_LABEL`, an alert and no
certificate: nothing they say can be trusted.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import PatchGuardError
from .geometry import IntOrPair
from .grid import Grid, grid_for
from .masking import (
    NO_LABEL,
    batch_slices,
    box_sums,
    check_labels,
    check_logits,
    check_window,
    clipped_integral,
    finite_maps,
)

# Above this many classes, alerts screen windows before their softmax (cheaper than it for few).
_SCREEN_CLASSES = 32

#: A default alert threshold (confidence of a window's prediction).
DEFAULT_TAU = 0.8


def check_tau(tau: float) -> float:
    """The alert threshold tau in [0, 1)."""
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise PatchGuardError(f"tau (alert confidence) must be a number in [0, 1), got {tau!r}") from None
    if not 0.0 <= tau < 1.0:
        raise PatchGuardError(f"tau (alert confidence) must be in [0, 1), got {tau}")
    return tau


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, the project's one; rows holding
    NaN or inf get all-zero probabilities (no evidence)."""
    z = np.asarray(logits, dtype=np.float64)
    finite = np.isfinite(z).all(axis=-1, keepdims=True)
    z = np.where(finite, z, 0.0)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.where(finite, e / e.sum(axis=-1, keepdims=True), 0.0)


def softmax_top(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax (ties: lowest index) and its softmax probability over the last axis."""
    top = scores.argmax(axis=-1)
    peak = np.take_along_axis(scores, top[..., None], axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        confidence = 1.0 / np.exp(scores - peak).sum(axis=-1)
    return top, confidence


@dataclass(frozen=True)
class WindowReadout:
    """Every window's view of a chunk of maps: position arrays (B, H-a+1, W-b+1)."""

    labels: np.ndarray       # (B,) argmax g, NO_LABEL for maps with NaN/inf
    predictions: np.ndarray  # argmax g_w (exact, on the grid)
    kept: np.ndarray         # (S - W(w)) on the signed grid, (B, H-a+1, W-b+1, C), exact
    grid: Grid
    cells: int               # H * W: g_w is (S - W(w)) / (H W) in logits
    finite: np.ndarray       # (B,)

    def scores_at(self, *index: Any) -> np.ndarray:
        """g_w in logits at ``kept[index]`` (all positions without an index); each
        value depends on its own integer alone, so a subset has the same bits."""
        return self.grid.to_logits(self.kept[index]) / self.cells

    @functools.cached_property
    def scores(self) -> np.ndarray:
        """g_w in logits, (B, H-a+1, W-b+1, C)."""
        return self.scores_at()

    @functools.cached_property
    def confidence(self) -> np.ndarray:
        """max softmax(g_w) at every position (B, H-a+1, W-b+1)."""
        with np.errstate(invalid="ignore", over="ignore"):
            return softmax_top(self.scores)[1]

    @classmethod
    def of(cls, u: np.ndarray, window: tuple[int, int]) -> "WindowReadout":
        grid = grid_for(u.shape, None)
        finite = finite_maps(u)
        with np.errstate(invalid="ignore", over="ignore"):
            # u cell by cell on the grid, sign kept: every S and S - W(w) an exact integer.
            table = clipped_integral(u, grid, signed=True)
            total = table[:, -1, -1]                                        # S (B, C), exact
            kept = box_sums(table, *window)
            np.subtract(total[:, None, None, :], kept, out=kept)            # S - W(w), exact
            predictions = (kept if finite.all() else np.nan_to_num(kept)).argmax(axis=-1)
        labels = np.where(finite, np.nan_to_num(total).argmax(axis=1), NO_LABEL)
        return cls(labels.astype(np.int64), predictions, kept, grid, u.shape[1] * u.shape[2], finite)

    def alerts(self, tau: float) -> np.ndarray:
        """(B,): some window predicts another class than the output with confidence > tau.

        Only those windows need a confidence: computed for them alone (the
        softmax over many classes at every position is most of the cost),
        row by row as :attr:`confidence` does, so the same bits."""
        n, i, j = np.nonzero(self.predictions != self.labels[:, None, None])
        if "confidence" in self.__dict__:  # computed already
            loud = self.confidence[n, i, j] > tau
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                if self.kept.shape[3] > _SCREEN_CLASSES:
                    n, i, j = (x[self._may_exceed(tau)[n, i, j]] for x in (n, i, j))
                loud = softmax_top(self.scores_at(n, i, j))[1] > tau
        alert = np.zeros(self.finite.shape[0], dtype=bool)
        alert[n[loud]] = True
        return alert | ~self.finite

    def _may_exceed(self, tau: float) -> np.ndarray:
        """Positions (B, H-a+1, W-b+1) whose confidence may exceed tau; the others'
        is below it for sure, decided without a softmax.

        The softmax's denominator ``sum_c exp(g_c - peak)`` is at least
        ``C exp(mean_c g - peak)`` (exp is convex), so where that reaches
        ``1 / tau`` the confidence is at most tau. The test asks for a
        relative 1e-6 more: the float sums behind it err by far less, so a
        window it clears would also be below tau by the softmax itself.
        """
        classes = self.kept.shape[3]
        if tau == 0.0:  # every confidence exceeds 0
            return np.ones(self.predictions.shape, dtype=bool)
        peak = np.take_along_axis(self.kept, self.predictions[..., None], axis=3)[..., 0]
        gap = (self.kept.sum(axis=3) / classes - peak) * (self.grid.resolution / self.cells)  # logits, <= 0
        return ~(gap >= np.log((1.0 + 1e-6) / (tau * classes)))

    def certified(self, y: np.ndarray, tau: float) -> np.ndarray:
        """(B,): output y, and every window predicts y with confidence > tau."""
        wins = self.predictions == y[:, None, None]
        sure = (wins & (self.confidence > tau)).all(axis=(1, 2))
        return sure & (self.labels == y) & self.finite


@dataclass(frozen=True)
class Detection:
    """Outputs of provable detection for a batch."""

    labels: np.ndarray  # (B,) int64 argmax of the mean logits; NO_LABEL for NaN/inf maps
    alerts: np.ndarray  # (B,) bool


def detect(local_logits: np.ndarray, window: IntOrPair, *, tau: float = DEFAULT_TAU) -> Detection:
    """Labels and alerts (B,) of u (B, H, W, C) against a patch inside any
    (a, b) ``window`` of cells, alert threshold ``tau``."""
    u = check_logits(local_logits)
    a, b = check_window(window, u.shape)
    tau = check_tau(tau)
    labels = np.empty(u.shape[0], dtype=np.int64)
    alerts = np.empty(u.shape[0], dtype=bool)
    for part in batch_slices(u):
        readout = WindowReadout.of(u[part], (a, b))
        labels[part], alerts[part] = readout.labels, readout.alerts(tau)
    return Detection(labels, alerts)


def certify_detection(
    local_logits: np.ndarray,
    window: IntOrPair,
    *,
    tau: float = DEFAULT_TAU,
    labels: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Certified detection (B,): for the label (``labels``, or each map's own
    output), every patch inside a window gives that label or an alert."""
    u = check_logits(local_logits)
    a, b = check_window(window, u.shape)
    tau = check_tau(tau)
    y = check_labels(labels, u.shape[0], u.shape[3])
    out = np.zeros(u.shape[0], dtype=bool)
    for part in batch_slices(u):
        readout = WindowReadout.of(u[part], (a, b))
        ys = readout.labels if y is None else y[part]
        out[part] = readout.certified(np.maximum(ys, 0), tau) & (ys >= 0)
    return out
