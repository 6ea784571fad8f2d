"""Certified accuracy of a labelled set of local logits, for several patch sizes.

One function, :func:`evaluate`, used by ``pg-certify --logits`` and
``pg-certify --engine`` alike, so the two give identical numbers for the same
logits. Report format (JSON-ready)::

    {"n": N, "undefended_accuracy": a,
     "results": [{"patch_size": p, "window": [a, b], "thres": T, "clip": c_h,
                  "defenses": {"mask": {"accuracy": .., "certified": ..},
                               "mask_paper": {...}, "cbn": {...}, "vote": {...},
                               "double": {...}, "mask_top3": {...}},
                  "detection": [{"tau": t, "accuracy": .., "certified": ..,
                                 "clean_alert_rate": ..}, ...]}, ...]}

``accuracy`` is clean accuracy, ``certified`` the fraction of images whose
TRUE label is certified against every patch of that size. ``mask_paper`` is
the variant PatchGuard's scripts report: certified only where, in addition,
the argmax of the clipped unmasked totals ``S_c`` is correct (its accuracy is
robust masking's, as for "mask"). "undefended" is the plain BagNet: argmax of
the summed local logits. "double" is feature-space double masking with
``masks_per_axis`` masks per axis against the patch window (its speed:
``benchmarks/feature_defenses.py``).
"mask_topK" (with ``top_k`` = K > 1): accuracy is the true label among the K
highest masked scores, certified that it provably stays there. "detection"
(provable detection, one row per tau): accuracy of argmax of the mean logits,
certified detection (label right, and any patch gives it or an alert) and
the fraction of clean images that raise an alert.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .aggregations import cbn_certify, cbn_predict, vote_certify, vote_predict
from .defenses import certify, predict
from .detection import WindowReadout, check_tau
from .double_masking import DEFAULT_MASKS_PER_AXIS, double_masking_certified
from .errors import PatchGuardError
from .geometry import IntOrPair, as_pair, check_fits, size_text, window_shape
from .masking import (
    MaskEvidence,
    batch_slices,
    check_labels,
    check_logits,
    check_params,
    clipped,
    each_chunk,
    finite_maps,
)
from .readouts import masked_scores
from .topk import check_top_k

#: Alert thresholds reported by default (provable detection).
DEFAULT_TAUS = (0.5, 0.7, 0.9)

log = logging.getLogger(__name__)


def _fraction(flags: np.ndarray) -> float:
    return float(np.mean(flags)) if flags.size else 0.0


@dataclass(frozen=True)
class EvaluationOptions:
    """What every figure of the report depends on besides the maps: the model's
    receptive field r and stride s (patch sizes -> windows), the defense's T
    and c_h, the double-masking mask count, the detection thresholds and k of
    top-k. Checked on construction (one PatchGuardError per mistake)."""

    receptive_field: int
    stride: int
    thres: float = 0.0
    clip: Optional[float] = None
    masks_per_axis: IntOrPair = DEFAULT_MASKS_PER_AXIS
    taus: Sequence[float] = DEFAULT_TAUS
    top_k: int = 1

    def __post_init__(self) -> None:
        thres, clip = check_params(self.thres, self.clip)
        object.__setattr__(self, "thres", thres)
        object.__setattr__(self, "clip", clip)
        object.__setattr__(self, "taus", tuple(check_tau(t) for t in self.taus))
        object.__setattr__(self, "top_k", check_top_k(self.top_k))

    def window(self, size: IntOrPair) -> tuple[int, int]:
        """The window (a, b) of cells of a ``size`` px patch: mask for "mask", patch window for the rest."""
        return window_shape(size, self.receptive_field, self.stride)


def evaluate(local_logits: np.ndarray, labels: np.ndarray, patch_sizes: Sequence[IntOrPair],
             options: EvaluationOptions) -> dict[str, Any]:
    """Accuracy and certified accuracy (report above) of u (N, H, W, C) with labels (N,).

    ``patch_sizes`` are pixel sizes (int, or (height, width)); each maps to
    its window through the receptive field r and stride s of ``options``
    (:func:`geometry.window_shape`), which serves as mask for "mask" and as
    patch window for "cbn" and "vote".
    """
    return report_of(per_image(local_logits, labels, patch_sizes, options), patch_sizes, options)


def per_image(local_logits: np.ndarray, labels: np.ndarray, patch_sizes: Sequence[IntOrPair],
              options: EvaluationOptions) -> dict[str, np.ndarray]:
    """Every figure of the report as one bool (N,) array: does image n count?

    Keys: ``"undefended"``, ``"{i}/{defense}/accuracy"``,
    ``"{i}/{defense}/certified"`` and ``"{i}/detection/{j}/{accuracy|certified|alert}"``
    for the i-th patch size and the j-th tau. Each image's flags depend on its
    own map only, so the flags of a data set cut into parts, concatenated, are
    the flags of the whole (how ``pg-certify --ray`` certifies on its workers),
    and :func:`report_of` turns them into the report.
    """
    u = check_logits(local_logits)
    y = check_labels(labels, u.shape[0], u.shape[3])
    if y is None:
        raise PatchGuardError("evaluation needs labels")
    if len(patch_sizes) == 0:
        raise PatchGuardError("give at least one patch size")
    thres, clip, masks_per_axis, top_k = options.thres, options.clip, options.masks_per_axis, options.top_k
    r, s = options.receptive_field, options.stride
    height, width = u.shape[1:3]
    with np.errstate(invalid="ignore", over="ignore"):
        undefended = u.sum(axis=(1, 2), dtype=np.float64).argmax(axis=1)
        paper_ok = clipped(u, clip).sum(axis=(1, 2)).argmax(axis=1) == y
    flags = {"undefended": (undefended == y) & finite_maps(u)}
    cbn_ok = cbn_predict(u) == y
    vote_ok = vote_predict(u) == y
    for i, size in enumerate(patch_sizes):
        window = check_fits(options.window(size), (height, width), f"a {size_text(size)} px patch (r={r}, s={s})")
        certified = certify(u, window, thres=thres, clip=clip, labels=y)
        double, double_ok = double_masking_certified(u, window, masks_per_axis=masks_per_axis,
                                                     clip=clip, labels=y)
        figures = {
            "mask": (predict(u, window, thres=thres, clip=clip) == y, certified),
            "mask_paper": (None, certified & paper_ok),  # accuracy: robust masking's
            "cbn": (cbn_ok, cbn_certify(u, window, y)),
            "vote": (vote_ok, vote_certify(u, window, y)),
            "double": (double == y, double_ok),
        }
        if top_k > 1:
            figures[f"mask_top{top_k}"] = (
                _in_top_k(u, y, window, thres, clip, top_k),
                certify(u, window, thres=thres, clip=clip, labels=y, top_k=top_k))
        for name, (accurate, proven) in figures.items():
            if accurate is not None:
                flags[f"{i}/{name}/accuracy"] = accurate
            flags[f"{i}/{name}/certified"] = proven
        for j, (correct, detected, alerts) in enumerate(_detection(u, y, window, options.taus)):
            flags.update({f"{i}/detection/{j}/accuracy": correct,
                          f"{i}/detection/{j}/certified": detected,
                          f"{i}/detection/{j}/alert": alerts})
        log.debug("patch %s px (window %dx%d): mask certified %.4f",
                  size_text(size), window[0], window[1], _fraction(certified))
    return {name: np.asarray(value, dtype=bool) for name, value in flags.items()}


def report_of(flags: Mapping[str, np.ndarray], patch_sizes: Sequence[IntOrPair],
              options: EvaluationOptions) -> dict[str, Any]:
    """The report (above) from the per-image flags of :func:`per_image` (same options)."""
    top_k = options.top_k
    names = ["mask", "mask_paper", "cbn", "vote", "double"] + ([f"mask_top{top_k}"] if top_k > 1 else [])
    results = []
    for i, size in enumerate(patch_sizes):
        defenses = {name: {"accuracy": _fraction(flags[f"{i}/{'mask' if name == 'mask_paper' else name}"
                                                       "/accuracy"]),
                           "certified": _fraction(flags[f"{i}/{name}/certified"])} for name in names}
        results.append({
            "patch_size": _size_json(size),
            "window": list(options.window(size)),
            "thres": options.thres,
            "clip": options.clip,
            "masks_per_axis": list(as_pair(options.masks_per_axis, "masks per axis")),
            "defenses": defenses,
            "detection": [{"tau": tau, "accuracy": _fraction(flags[f"{i}/detection/{j}/accuracy"]),
                           "certified": _fraction(flags[f"{i}/detection/{j}/certified"]),
                           "clean_alert_rate": _fraction(flags[f"{i}/detection/{j}/alert"])}
                          for j, tau in enumerate(options.taus)],
        })
    return {
        "n": int(flags["undefended"].shape[0]),
        "undefended_accuracy": _fraction(flags["undefended"]),
        "results": results,
    }


def _detection(u: np.ndarray, y: np.ndarray, window: tuple[int, int],
               taus: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Provable detection per tau: (correct, certified detection, clean alert) flags (N,)."""
    correct = np.zeros(u.shape[0], dtype=bool)
    certified = np.zeros((len(taus), u.shape[0]), dtype=bool)
    alerts = np.zeros((len(taus), u.shape[0]), dtype=bool)
    for part in batch_slices(u):
        readout = WindowReadout.of(u[part], window)
        correct[part] = readout.labels == y[part]
        for i, tau in enumerate(taus):
            certified[i, part] = readout.certified(y[part], tau)
            alerts[i, part] = readout.alerts(tau)
    return [(correct, certified[i], alerts[i]) for i in range(len(taus))]


def _in_top_k(u: np.ndarray, y: np.ndarray, window: tuple[int, int], thres: float,
              clip: Optional[float], k: int) -> np.ndarray:
    """(N,) the label is among the k highest masked scores (ties: lowest index first)."""
    def in_top_k(evidence: MaskEvidence, part: slice) -> np.ndarray:
        scores = masked_scores(evidence)
        own = scores[np.arange(scores.shape[0]), y[part]][:, None]
        ahead = (scores > own) | ((scores == own) & (np.arange(scores.shape[1]) < y[part][:, None]))
        return (ahead.sum(axis=1) < k) & evidence.finite

    return each_chunk(u, window, thres, clip, in_top_k, np.bool_)


def _size_json(size: IntOrPair) -> Any:
    pair = as_pair(size, "patch size")
    return pair[0] if pair[0] == pair[1] else list(pair)
