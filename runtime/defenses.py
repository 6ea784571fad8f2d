"""One face for the three aggregations: ``predict`` and ``certify`` by name.

``defense`` is one of :data:`DEFENSES`: "mask" (robust masking, PatchGuard),
"cbn" (clipped BagNet) or "vote" (majority vote). ``window`` is the mask
(a, b) for "mask" and the patch window for "cbn" / "vote"; ``patch_window``
(a smaller patch under the mask) applies to "mask" only. Numpy in and out:
local logits u (B, H, W, C), predictions int64 (B,) (``NO_LABEL`` for maps
with NaN or inf), certificates bool (B,).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .aggregations import cbn_certify, cbn_predict, vote_certify, vote_predict
from .certificate import certify_mask
from .errors import PatchGuardError
from .geometry import IntOrPair
from .masking import masked_labels

DEFENSES = ("mask", "cbn", "vote")


def _check_defense(defense: str) -> str:
    if defense not in DEFENSES:
        raise PatchGuardError(f"unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}")
    return defense


def predict(
    local_logits: np.ndarray,
    window: Optional[IntOrPair] = None,
    *,
    defense: str = "mask",
    thres: float = 0.0,
    clip: Optional[float] = None,
) -> np.ndarray:
    """Predictions (B,) of the chosen aggregation (``window`` needed for "mask" only)."""
    if _check_defense(defense) == "mask":
        if window is None:
            raise PatchGuardError("robust masking needs a mask window")
        return masked_labels(local_logits, window, thres=thres, clip=clip)
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
) -> np.ndarray:
    """Certificates (B,): is the label (``labels``, or each map's own prediction)
    unchanged by any patch inside the threat model?"""
    if _check_defense(defense) == "mask":
        return certify_mask(local_logits, window, patch_window=patch_window, thres=thres,
                            clip=clip, labels=labels)
    if patch_window is not None:
        raise PatchGuardError(
            f"patch_window applies to defense='mask' only; for {defense!r} the window is the patch"
        )
    if defense == "cbn":
        return cbn_certify(local_logits, window, labels)
    return vote_certify(local_logits, window, labels)
