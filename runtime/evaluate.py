"""Certified accuracy of a labelled set of local logits, for several patch sizes.

One function, :func:`evaluate`, used by ``pg-certify --logits`` and
``pg-certify --engine`` alike, so the two give identical numbers for the same
logits. Report format (JSON-ready)::

    {"n": N, "undefended_accuracy": a,
     "results": [{"patch_size": p, "window": [a, b], "thres": T, "clip": c_h,
                  "defenses": {"mask": {"accuracy": .., "certified": ..},
                               "mask_paper": {...}, "cbn": {...}, "vote": {...}}}, ...]}

``accuracy`` is clean accuracy, ``certified`` the fraction of images whose
TRUE label is certified against every patch of that size. ``mask_paper`` is
the variant PatchGuard's scripts report: certified only where, in addition,
the argmax of the clipped unmasked totals ``S_c`` is correct (its accuracy is
robust masking's, as for "mask"). "undefended" is the plain BagNet: argmax of
the summed local logits.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from .aggregations import cbn_certify, cbn_predict, vote_certify, vote_predict
from .certificate import certify_mask
from .errors import PatchGuardError
from .geometry import IntOrPair, as_pair, window_shape
from .masking import check_labels, check_logits, check_params, clipped, finite_maps, masked_labels

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
    height, width = u.shape[1:3]
    with np.errstate(invalid="ignore", over="ignore"):
        undefended = u.sum(axis=(1, 2), dtype=np.float64).argmax(axis=1)
        paper_ok = clipped(u, clip).sum(axis=(1, 2)).argmax(axis=1) == y
    finite = finite_maps(u)
    cbn_ok = cbn_predict(u) == y
    vote_ok = vote_predict(u) == y
    results = []
    for size in patch_sizes:
        window = window_shape(size, receptive_field, stride)
        if window[0] > height or window[1] > width:
            raise PatchGuardError(
                f"a {_size_text(size)} px patch needs a {window[0]}x{window[1]} window, larger "
                f"than the {height}x{width} map (r={receptive_field}, s={stride})"
            )
        predictions = masked_labels(u, window, thres=thres, clip=clip)
        certified = certify_mask(u, window, thres=thres, clip=clip, labels=y)
        mask_accuracy = _fraction(predictions == y)
        results.append({
            "patch_size": _size_json(size),
            "window": list(window),
            "thres": thres,
            "clip": clip,
            "defenses": {
                "mask": {"accuracy": mask_accuracy, "certified": _fraction(certified)},
                "mask_paper": {"accuracy": mask_accuracy,
                               "certified": _fraction(certified & paper_ok)},
                "cbn": {"accuracy": _fraction(cbn_ok),
                        "certified": _fraction(cbn_certify(u, window, y))},
                "vote": {"accuracy": _fraction(vote_ok),
                         "certified": _fraction(vote_certify(u, window, y))},
            },
        })
        log.debug("patch %s px (window %dx%d): mask certified %.4f",
                 _size_text(size), window[0], window[1], results[-1]["defenses"]["mask"]["certified"])
    return {
        "n": int(u.shape[0]),
        "undefended_accuracy": _fraction((undefended == y) & finite),
        "results": results,
    }


def _size_json(size: IntOrPair) -> Any:
    pair = as_pair(size, "patch size")
    return pair[0] if pair[0] == pair[1] else list(pair)


def _size_text(size: IntOrPair) -> str:
    pair = as_pair(size, "patch size")
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
