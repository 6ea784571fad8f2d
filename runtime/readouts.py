"""What else a frame's local logits say, besides label and certificate.

All from the one map u (B, H, W, C) the defense already read:

- ``alert``: provable detection (:mod:`.detection`) over the patch window,
  threshold tau;
- ``top_k``: the k highest masked scores and their classes (ties: lowest
  index first), and whether the label provably stays among the top k
  (:mod:`.topk`; robust masking only);
- ``margin``: how far the worst patch is from flipping the label, in
  evidence units (negative: some patch can); ``margin / (H W)`` puts it in
  mean-logit units, like the scores;
- ``confidence``: the softmax probability of the label over the masked
  scores in mean-logit units (evidence / (H W));
- ``spread``: the cell-to-cell standard deviation of u, averaged over
  classes. A uniform frame (black, grey, a lens cap) makes every cell see the
  same pixels, so spread is 0 whatever the softmax says: the BagNet then
  reports only the prior it learned for featureless background, often very
  confidently (the bundled model calls a black frame "Dress" at 0.94).

Abstaining (``label`` -1, never certified) is the caller's decision from
``confidence`` and ``spread``. A certificate is about patches: it says no
patch of that size changes the label, not that the frame shows anything the
model knows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .detection import DEFAULT_TAU, WindowReadout, check_tau, softmax
from .double_masking import DEFAULT_MASKS_PER_AXIS, DoubleMaskEvidence
from .errors import PatchGuardError
from .geometry import IntOrPair, Pair, as_pair, mask_grid
from .masking import MaskEvidence, evidence_from
from .topk import check_top_k, top_k_certified, top_k_margins

#: Defenses a frame pipeline runs on the local logits.
FRAME_DEFENSES = ("mask", "double")


@dataclass(frozen=True)
class FrameSettings:
    """How a pipeline reads each frame's map, beyond the threat model.

    ``defense`` "mask" (robust masking) or "double" (feature-space double
    masking, ``masks_per_axis`` per axis); ``tau`` the alert threshold of
    provable detection; ``top_k`` how many classes ``top_k`` lists (and, for
    "mask", certifies); a frame abstains (label -1, never certified) when its
    confidence is below ``abstain_below`` or its spread below ``abstain_spread``.
    """

    defense: str = "mask"
    masks_per_axis: Pair = (DEFAULT_MASKS_PER_AXIS, DEFAULT_MASKS_PER_AXIS)
    tau: float = DEFAULT_TAU
    top_k: int = 1
    abstain_below: Optional[float] = None
    abstain_spread: Optional[float] = None


def frame_settings(
    defense: str = "mask",
    masks_per_axis: Optional[IntOrPair] = None,
    tau: float = DEFAULT_TAU,
    top_k: int = 1,
    abstain_below: Optional[float] = None,
    abstain_spread: Optional[float] = None,
) -> FrameSettings:
    """Checked :class:`FrameSettings` (every mistake one PatchGuardError)."""
    if defense not in FRAME_DEFENSES:
        raise PatchGuardError(
            f"defense {defense!r} does not run per frame here; choose one of {', '.join(FRAME_DEFENSES)}")
    if masks_per_axis is not None and defense != "double":
        raise PatchGuardError(f"masks per axis apply to defense 'double', not {defense!r}")
    per_axis = as_pair(masks_per_axis if masks_per_axis is not None else DEFAULT_MASKS_PER_AXIS,
                       "masks per axis")
    if abstain_below is not None:
        try:
            abstain_below = float(abstain_below)
        except (TypeError, ValueError):
            abstain_below = float("nan")
        if not 0.0 <= abstain_below <= 1.0:
            raise PatchGuardError(f"abstain-below (a confidence) must be in [0, 1], got {abstain_below}")
    if abstain_spread is not None:
        try:
            abstain_spread = float(abstain_spread)
        except (TypeError, ValueError):
            abstain_spread = float("nan")
        if not abstain_spread >= 0.0:
            raise PatchGuardError(f"abstain-spread (logits) must be a number >= 0, got {abstain_spread}")
    return FrameSettings(defense, per_axis, check_tau(tau), check_top_k(top_k), abstain_below,
                         abstain_spread)


def abstains(readouts: "Readouts", settings: FrameSettings) -> np.ndarray:
    """(B,) frames whose confidence or spread is below the settings' thresholds."""
    out = np.zeros(readouts.confidence.shape[0], dtype=bool)
    if settings.abstain_below is not None:
        out |= ~(readouts.confidence >= settings.abstain_below)  # NaN (no label) abstains too
    if settings.abstain_spread is not None:
        out |= ~(readouts.spread >= settings.abstain_spread)
    return out


@dataclass(frozen=True)
class Readouts:
    """Per-map readouts of a chunk (B maps)."""

    alert: np.ndarray             # (B,) bool
    top_labels: np.ndarray        # (B, k) int64, best first
    top_scores: np.ndarray        # (B, k) float64, mean-logit units
    top_k_certified: Optional[np.ndarray]  # (B,) bool; None where the defense has no top-k bound
    margin: np.ndarray            # (B,) float64, evidence units (NaN: no label)
    confidence: np.ndarray        # (B,) float64 in (0, 1] (NaN: no label)
    spread: np.ndarray            # (B,) float64, logits


def top_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best classes (B, k) and their scores (B, k); equal scores: lowest index first."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)


def spread(u: np.ndarray) -> np.ndarray:
    """Cell-to-cell standard deviation of u (B, H, W, C), averaged over classes (B,)."""
    flat = u.reshape(u.shape[0], -1, u.shape[3])
    return flat.std(axis=1, dtype=np.float64).mean(axis=1)


def masked_scores(evidence: MaskEvidence) -> np.ndarray:
    """Robust-masking evidence of every class (B, C), in class order, exact
    grid units (``evidence.grid.to_logits`` for logits)."""
    classes = evidence.totals.shape[1]
    _, exact, _ = evidence.ranked(classes)
    return evidence_from(exact, evidence.largest(), evidence.thres)


def _finish(u: np.ndarray, labels: np.ndarray, scores: np.ndarray, margin: np.ndarray,
            top_ok: Optional[np.ndarray], window: Pair, tau: float, k: int,
            finite: np.ndarray) -> Readouts:
    cells = u.shape[1] * u.shape[2]
    with np.errstate(invalid="ignore", over="ignore"):
        per_cell = np.where(finite[:, None], scores / cells, 0.0)
        probability = softmax(per_cell)
    rows = np.arange(labels.shape[0])
    confidence = np.where(labels >= 0, probability[rows, np.maximum(labels, 0)], np.nan)
    best, best_scores = top_scores(per_cell, k)
    alert = WindowReadout.of(u, window).alerts(tau)
    return Readouts(alert, best, best_scores, top_ok, margin, confidence, spread(u))


def read_mask(u: np.ndarray, evidence: MaskEvidence, labels: np.ndarray, window: Pair,
              tau: float, k: int) -> Readouts:
    """Readouts of robust masking: ``evidence`` of u under the mask ``window``
    (also the patch window), ``labels`` (B,) its predictions (-1: none)."""
    safe = np.maximum(labels, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = evidence.grid.to_logits(masked_scores(evidence))  # every class's sums, reused below
        margin = top_k_margins(evidence, safe, window, 1)
        top_ok = top_k_certified(evidence, safe, window, k) if k > 1 else None
    margin = np.where(labels >= 0, margin, np.nan)
    return _finish(u, labels, scores, margin, top_ok, window, tau, k, evidence.finite)


def read_double(u: np.ndarray, evidence: DoubleMaskEvidence, labels: np.ndarray, window: Pair,
                tau: float, k: int) -> Readouts:
    """Readouts of double masking: scores are the one-mask scores behind the
    label, the margin the smallest two-mask margin; no top-k bound."""
    safe = np.maximum(labels, 0)
    margin = np.where(labels >= 0, evidence.margins(safe), np.nan)  # logits
    scores = evidence.label_scores(safe)  # logits
    return _finish(u, labels, scores, margin, None, window, tau, k, evidence.finite)


def _stack(parts: list[Readouts]) -> Readouts:
    """One :class:`Readouts` from those of consecutive chunks."""
    if len(parts) == 1:
        return parts[0]
    top_ok = None if parts[0].top_k_certified is None else np.concatenate(
        [p.top_k_certified for p in parts if p.top_k_certified is not None])
    return Readouts(
        np.concatenate([p.alert for p in parts]), np.concatenate([p.top_labels for p in parts]),
        np.concatenate([p.top_scores for p in parts]), top_ok,
        np.concatenate([p.margin for p in parts]), np.concatenate([p.confidence for p in parts]),
        np.concatenate([p.spread for p in parts]))


def mask_readouts(u: np.ndarray, window: Pair, settings: FrameSettings, thres: float,
                  clip: Optional[float], labels: np.ndarray) -> Readouts:
    """Readouts (B maps) of robust masking with the mask ``window``, given its
    predictions ``labels`` (B,) for u (B, H, W, C)."""
    from .masking import batch_slices

    parts = []
    with np.errstate(invalid="ignore", over="ignore"):
        for part in batch_slices(u):
            evidence = MaskEvidence(u[part], window, thres, clip)
            parts.append(read_mask(u[part], evidence, labels[part], window, settings.tau,
                                   settings.top_k))
    return _stack(parts)


@dataclass(frozen=True)
class DoubleVerdicts:
    """Double masking of B maps: labels, certificates, the deciding mask's
    cells (top, left, (ma, mb)) or None, and the readouts."""

    labels: np.ndarray
    certified: np.ndarray
    masks: list[Optional[tuple[int, int, Pair]]]
    readouts: Readouts


def double_verdicts(u: np.ndarray, window: Pair, settings: FrameSettings,
                    clip: Optional[float]) -> DoubleVerdicts:
    """Feature-space double masking of u (B, H, W, C) against the patch
    ``window``, with ``settings.masks_per_axis`` masks per axis."""
    from .double_masking import pair_slices

    masks = mask_grid(u.shape[1:3], window, settings.masks_per_axis)
    labels, certified, parts = [], [], []
    found: list[Optional[tuple[int, int, Pair]]] = []
    for part in pair_slices(u, masks):
        evidence = DoubleMaskEvidence.of(u[part], masks, clip)
        y, deciding = evidence.decision()
        labels.append(y)
        certified.append(evidence.certified(y))
        for index in deciding:
            if index < 0:
                found.append(None)
            else:
                top, left, _, _ = masks.box(int(index))
                found.append((top, left, masks.side))
        parts.append(read_double(u[part], evidence, y, window, settings.tau, settings.top_k))
    return DoubleVerdicts(np.concatenate(labels), np.concatenate(certified), found, _stack(parts))
