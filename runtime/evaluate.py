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
from typing import Any, Optional, Sequence

import numpy as np

from .aggregations import cbn_certify, cbn_predict, vote_certify, vote_predict
from .certificate import certify_mask
from .detection import WindowReadout, check_tau
from .double_masking import DEFAULT_MASKS_PER_AXIS, double_masking_certified
from .errors import PatchGuardError
from .geometry import IntOrPair, as_pair, check_fits, size_text, window_shape
from .masking import MaskEvidence, check_labels, check_logits, check_params, chunks, clipped, finite_maps, masked_labels
from .readouts import masked_scores
from .topk import certify_top_k, check_top_k

#: Alert thresholds reported by default (provable detection).
DEFAULT_TAUS = (0.5, 0.7, 0.9)

log = logging.getLogger(__name__)


def _fraction(flags: np.ndarray) -> float:
    return float(np.mean(flags)) if flags.size else 0.0


def evaluate(
    local_logits: np.ndarray,
    labels: np.ndarray,
    patch_sizes: Sequence[IntOrPair],
    *,
    receptive_field: int,
    stride: int,
    thres: float = 0.0,
    clip: Optional[float] = None,
    masks_per_axis: IntOrPair = DEFAULT_MASKS_PER_AXIS,
    taus: Sequence[float] = DEFAULT_TAUS,
    top_k: int = 1,
) -> dict[str, Any]:
    """Accuracy and certified accuracy (report above) of u (N, H, W, C) with labels (N,).

    ``patch_sizes`` are pixel sizes (int, or (height, width)); each maps to
    its window through the receptive field r and stride s
    (:func:`geometry.window_shape`), which serves as mask for "mask" and as
    patch window for "cbn" and "vote".
    """
    u = check_logits(local_logits)
    thres, clip = check_params(thres, clip)
    y = check_labels(labels, u.shape[0], u.shape[3])
    if y is None:
        raise PatchGuardError("evaluation needs labels")
    if len(patch_sizes) == 0:
        raise PatchGuardError("give at least one patch size")
    taus = [check_tau(t) for t in taus]
    top_k = check_top_k(top_k)
    height, width = u.shape[1:3]
    with np.errstate(invalid="ignore", over="ignore"):
        undefended = u.sum(axis=(1, 2), dtype=np.float64).argmax(axis=1)
        paper_ok = clipped(u, clip).sum(axis=(1, 2)).argmax(axis=1) == y
    finite = finite_maps(u)
    cbn_ok = cbn_predict(u) == y
    vote_ok = vote_predict(u) == y
    results = []
    for size in patch_sizes:
        window = check_fits(window_shape(size, receptive_field, stride), (height, width),
                            f"a {size_text(size)} px patch (r={receptive_field}, s={stride})")
        predictions = masked_labels(u, window, thres=thres, clip=clip)
        certified = certify_mask(u, window, thres=thres, clip=clip, labels=y)
        mask_accuracy = _fraction(predictions == y)
        double, double_ok = double_masking_certified(u, window, masks_per_axis=masks_per_axis,
                                                     clip=clip, labels=y)
        row: dict[str, Any] = {
            "patch_size": _size_json(size),
            "window": list(window),
            "thres": thres,
            "clip": clip,
            "masks_per_axis": list(as_pair(masks_per_axis, "masks per axis")),
            "defenses": {
                "mask": {"accuracy": mask_accuracy, "certified": _fraction(certified)},
                "mask_paper": {"accuracy": mask_accuracy,
                               "certified": _fraction(certified & paper_ok)},
                "cbn": {"accuracy": _fraction(cbn_ok),
                        "certified": _fraction(cbn_certify(u, window, y))},
                "vote": {"accuracy": _fraction(vote_ok),
                         "certified": _fraction(vote_certify(u, window, y))},
                "double": {"accuracy": _fraction(double == y), "certified": _fraction(double_ok)},
            },
            "detection": _detection(u, y, window, taus),
        }
        if top_k > 1:
            row["defenses"][f"mask_top{top_k}"] = {
                "accuracy": _fraction(_in_top_k(u, y, window, thres, clip, top_k)),
                "certified": _fraction(certify_top_k(u, window, top_k, thres=thres, clip=clip,
                                                     labels=y)),
            }
        results.append(row)
        log.debug("patch %s px (window %dx%d): mask certified %.4f",
                 size_text(size), window[0], window[1], results[-1]["defenses"]["mask"]["certified"])
    return {
        "n": int(u.shape[0]),
        "undefended_accuracy": _fraction((undefended == y) & finite),
        "results": results,
    }


def _detection(u: np.ndarray, y: np.ndarray, window: tuple[int, int],
               taus: Sequence[float]) -> list[dict[str, Any]]:
    """Provable detection per tau: accuracy, certified detection, clean alert rate."""
    correct = np.zeros(u.shape[0], dtype=bool)
    certified = np.zeros((len(taus), u.shape[0]), dtype=bool)
    alerts = np.zeros((len(taus), u.shape[0]), dtype=bool)
    for part in chunks(u):
        readout = WindowReadout.of(u[part], window)
        correct[part] = readout.labels == y[part]
        for i, tau in enumerate(taus):
            certified[i, part] = readout.certified(y[part], tau)
            alerts[i, part] = readout.alerts(tau)
    return [{"tau": tau, "accuracy": _fraction(correct), "certified": _fraction(certified[i]),
             "clean_alert_rate": _fraction(alerts[i])} for i, tau in enumerate(taus)]


def _in_top_k(u: np.ndarray, y: np.ndarray, window: tuple[int, int], thres: float,
              clip: Optional[float], k: int) -> np.ndarray:
    """(N,) the label is among the k highest masked scores (ties: lowest index first)."""
    out = np.zeros(u.shape[0], dtype=bool)
    for part in chunks(u):
        evidence = MaskEvidence(u[part], window, thres, clip)
        scores = masked_scores(evidence)
        own = scores[np.arange(scores.shape[0]), y[part]][:, None]
        ahead = (scores > own) | ((scores == own) & (np.arange(scores.shape[1]) < y[part][:, None]))
        out[part] = (ahead.sum(axis=1) < k) & evidence.finite
    return out


def _size_json(size: IntOrPair) -> Any:
    pair = as_pair(size, "patch size")
    return pair[0] if pair[0] == pair[1] else list(pair)
