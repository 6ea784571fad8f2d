"""Does the INT8 model decide and certify like the fp32 one?

Compares robust-masking predictions (PatchGuard Algorithm 1) and
certificates (Algorithm 2) of two local-logit batches u, (B, H, W, C), on the
same images: the fraction of images where the INT8 prediction equals the
fp32 one, where the certificate verdict (of each model's own prediction,
the deployment question) is the same, and, with labels, the certified
accuracies and their difference. Pure numpy in and out.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ..runtime import certify, robust_masking
from ..runtime.errors import PatchGuardError
from ..runtime.geometry import IntOrPair, as_pair

log = logging.getLogger(__name__)

# Issue 5's bars: predictions agree on >= 98% of images, certified accuracy drops <= 2 points.
MIN_AGREEMENT = 0.98
MAX_CERTIFIED_DROP = 2.0


def int8_agreement(
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: Optional[np.ndarray],
    window: IntOrPair,
    *,
    thres: float = 0.0,
    clip: Optional[float] = None,
    min_agreement: float = MIN_AGREEMENT,
    max_drop: float = MAX_CERTIFIED_DROP,
) -> dict[str, Any]:
    """Agreement of INT8 with fp32 local logits under robust masking with ``window`` (a, b).

    Returns a JSON-ready dict: ``images``; ``prediction_agreement`` and
    ``certificate_agreement`` (fractions in [0, 1]); with ``labels`` (B,)
    also ``fp32_accuracy``, ``int8_accuracy``, ``fp32_certified_accuracy``,
    ``int8_certified_accuracy`` and ``certified_accuracy_drop`` (fp32 minus
    INT8, in points of percent); ``warning``: a sentence when the prediction
    agreement is below ``min_agreement`` or the certified accuracy drops by
    more than ``max_drop`` points, else None (also logged).

    The certificate agreement is reported, not judged: a certificate flips
    whenever a margin near zero moves by a rounding step, so it sits a few
    points below the prediction agreement even for a good INT8 model (about
    97% against 99% on the bundled Fashion-MNIST model); what the deployment
    loses is the certified-accuracy drop.
    """
    fp32 = np.asarray(fp32_logits, dtype=np.float32)
    int8 = np.asarray(int8_logits, dtype=np.float32)
    if fp32.ndim != 4 or fp32.shape != int8.shape:
        raise PatchGuardError(
            "need two local-logit batches (B, H, W, C) of one shape, "
            f"got {fp32.shape} and {int8.shape}"
        )
    if len(fp32) == 0:
        raise PatchGuardError("cannot compare INT8 and fp32 on zero images")
    window = as_pair(window)
    pred32, _ = robust_masking(fp32, window, thres=thres, clip=clip)
    pred8, _ = robust_masking(int8, window, thres=thres, clip=clip)
    cert32 = certify(fp32, window, thres=thres, clip=clip)
    cert8 = certify(int8, window, thres=thres, clip=clip)
    report: dict[str, Any] = {
        "images": len(fp32),
        "window": list(window),
        "prediction_agreement": float(np.mean(pred32 == pred8)),
        "certificate_agreement": float(np.mean(cert32 == cert8)),
    }
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(fp32),):
            raise PatchGuardError(f"need one label per image ({len(fp32)}), got {labels.shape}")
        true32 = certify(fp32, window, thres=thres, clip=clip, labels=labels)
        true8 = certify(int8, window, thres=thres, clip=clip, labels=labels)
        report.update(
            fp32_accuracy=float(np.mean(pred32 == labels)),
            int8_accuracy=float(np.mean(pred8 == labels)),
            fp32_certified_accuracy=float(np.mean(true32)),
            int8_certified_accuracy=float(np.mean(true8)),
        )
        report["certified_accuracy_drop"] = 100.0 * (
            report["fp32_certified_accuracy"] - report["int8_certified_accuracy"])
    problems = []
    if report["prediction_agreement"] < min_agreement:
        share = 100 * report["prediction_agreement"]
        problems.append(f"predictions agree with fp32 on {share:.1f}% of images "
                        f"(< {100 * min_agreement:.0f}%)")
    if report.get("certified_accuracy_drop", 0.0) > max_drop:
        problems.append(f"certified accuracy drops by {report['certified_accuracy_drop']:.1f} "
                        f"points (> {max_drop:g})")
    report["warning"] = None
    if problems:
        report["warning"] = ("INT8 " + " and ".join(problems) + ": recalibrate on more "
                             "representative images, try another flavour, or keep fp32/fp16")
        log.warning("%s", report["warning"])
    return report
