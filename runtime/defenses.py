"""One face for the aggregations: ``predict`` and ``certify`` by name.

``defense`` is one of :data:`DEFENSES`: "mask" (robust masking, PatchGuard),
"cbn" (clipped BagNet), "vote" (majority vote) or "double" (feature-space
double masking, :mod:`.double_masking`). ``window`` is the mask (a, b) for
"mask" and the patch window for "cbn" / "vote" / "double"; ``patch_window``
(a smaller patch under the mask), ``top_k`` (top-k certificates,
:mod:`.topk`) and ``wrap`` (windows and patches wrap around the columns:
Mask-DS's band maps, :mod:`.smoothing`) apply to "mask" only,
``masks_per_axis`` to "double" only.
Numpy in and out:
local logits u (B, H, W, C), predictions int64 (B,) (``NO_LABEL`` for maps
with NaN or inf), certificates bool (B,).
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from .aggregations import cbn_certify, cbn_predict, vote_certify, vote_predict
from .certificate import certify_evidence, per_map
from .double_masking import DEFAULT_MASKS_PER_AXIS, double_masking, double_masking_certified
from .errors import PatchGuardError
from .geometry import IntOrPair
from .masking import check_logits, check_params, check_window, each_chunk
from .topk import check_top_k, top_k_certified

DEFENSES = ("mask", "cbn", "vote", "double")


def _check_defense(defense: str) -> str:
    if defense not in DEFENSES:
        raise PatchGuardError(f"unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}")
    return defense


def _check_options(defense: str, thres: float, masks_per_axis: Optional[IntOrPair], wrap: bool) -> None:
    """Options that belong to one defense are refused by the others (never ignored)."""
    _check_defense(defense)
    if masks_per_axis is not None and defense != "double":
        raise PatchGuardError(f"masks_per_axis applies to defense='double' only, not {defense!r}")
    if wrap and defense != "mask":
        raise PatchGuardError(f"wrap applies to defense='mask' only, not {defense!r}")
    if defense == "double" and thres:
        raise PatchGuardError("thres (T) applies to defense='mask' only, not 'double'")


def predict(
    local_logits: np.ndarray,
    window: Optional[IntOrPair] = None,
    *,
    defense: str = "mask",
    thres: float = 0.0,
    clip: Optional[float] = None,
    masks_per_axis: Optional[IntOrPair] = None,
    wrap: bool = False,
) -> np.ndarray:
    """Predictions (B,) of the chosen aggregation (``window`` needed for "mask"
    and "double" only). For "mask", equal to :func:`.masking.robust_masking`'s,
    computing window sums only for the classes that can win."""
    _check_options(defense, thres, masks_per_axis, wrap)
    if defense in ("mask", "double"):
        if window is None:
            raise PatchGuardError(
                "robust masking needs a mask window" if defense == "mask"
                else "double masking needs the patch window")
        if defense == "double":
            return double_masking(local_logits, window, clip=clip,
                                  masks_per_axis=masks_per_axis or DEFAULT_MASKS_PER_AXIS)
        u = check_logits(local_logits)
        thres, clip = check_params(thres, clip)
        return each_chunk(u, check_window(window, u.shape), thres, clip,
                          lambda evidence, _: evidence.predictions(), np.int64, wrap)
    return cbn_predict(local_logits) if defense == "cbn" else vote_predict(local_logits)


def certify(
    local_logits: np.ndarray,
    window: IntOrPair,
    *,
    defense: str = "mask",
    patch_window: Optional[IntOrPair] = None,
    thres: float = 0.0,
    clip: Optional[float] = None,
    labels: Optional[np.ndarray] = None,
    top_k: int = 1,
    masks_per_axis: Optional[IntOrPair] = None,
    wrap: bool = False,
) -> np.ndarray:
    """Certificates (B,): is the label (``labels``, or each map's own prediction)
    unchanged by any patch inside the threat model? With ``top_k`` = k > 1
    ("mask" only): does it stay among the k highest masked scores?"""
    k = check_top_k(top_k)
    _check_options(defense, thres, masks_per_axis, wrap)
    if defense == "mask":
        if k > 1 and wrap:
            raise PatchGuardError("top_k certificates do not wrap around the columns (wrap=True)")
        decide = certify_evidence if k == 1 else functools.partial(top_k_certified, k=k)
        return per_map(local_logits, window, patch_window, thres, clip, labels, decide, np.bool_, wrap)
    if k > 1:
        raise PatchGuardError(f"top_k applies to defense='mask' only, not {defense!r}")
    if patch_window is not None:
        raise PatchGuardError(
            f"patch_window applies to defense='mask' only; for {defense!r} the window is the patch"
        )
    if defense == "double":
        return double_masking_certified(local_logits, window, clip=clip, labels=labels,
                                        masks_per_axis=masks_per_axis or DEFAULT_MASKS_PER_AXIS)[1]
    if defense == "cbn":
        return cbn_certify(local_logits, window, labels)
    return vote_certify(local_logits, window, labels)
