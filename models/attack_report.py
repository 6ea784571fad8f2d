"""The pg-attack report: what the attack did, split by certificate.

Success is counted separately on certified and uncertified images: a
certified image that the attack breaks is a bug in the certificate, and the
report keeps its patch so that the bug can be replayed.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .attack import ImageResult, Outcome, PatchAttack


def attack_report(results: list[ImageResult], attack: PatchAttack) -> dict[str, Any]:
    """The report as JSON-ready data: settings, accuracies, success per group."""
    n = len(results)
    cfg = attack.config

    def group(members: list[ImageResult]) -> dict[str, Any]:
        broken = sum(r.outcome is Outcome.BROKEN for r in members)
        return {"n": len(members), "broken": broken,
                "success_rate": broken / len(members) if members else None}

    attacked = [r for r in results if r.outcome is not Outcome.MISCLASSIFIED]
    certified = [r for r in attacked if r.certified]
    uncertified = [r for r in attacked if not r.certified]
    return {
        "n": n,
        "arch": attack.record.arch,
        "patch_size": list(attack.patch),
        "window": list(attack.window),
        "thres": cfg.thres,
        "clip": cfg.clip,
        "steps": cfg.steps,
        "stride": cfg.stride,
        "refine": cfg.refine,
        "seed": cfg.seed,
        "clean_accuracy": len(attacked) / n,
        "certified_accuracy": len(certified) / n,
        "robust_accuracy": sum(r.outcome is Outcome.HELD for r in results) / n,
        "misclassified": n - len(attacked),
        "certified": group(certified),
        "uncertified": group(uncertified),
        "certified_broken": [
            {"index": r.index, "label": r.label, "prediction": r.prediction,
             "position": list(r.position or ()), "margin": r.margin,
             "patch": np.round(r.patch, 6).tolist() if r.patch is not None else None}
            for r in certified if r.outcome is Outcome.BROKEN
        ],
    }


def report_text(report: dict[str, Any]) -> str:
    """Two lines for the terminal: accuracies, then attack success per group."""
    cert, unc = report["certified"], report["uncertified"]
    (ph, pw), (a, b) = report["patch_size"], report["window"]

    def rate(group: dict[str, Any]) -> str:
        return "n/a" if group["success_rate"] is None else f"{100 * group['success_rate']:.1f}%"

    return (
        f"{report['n']} images, {ph}x{pw} patch (window {a}x{b}): "
        f"clean {100 * report['clean_accuracy']:.1f}%, certified {100 * report['certified_accuracy']:.1f}%, "
        f"robust under attack {100 * report['robust_accuracy']:.1f}%\n"
        f"attack success: uncertified {unc['broken']}/{unc['n']} ({rate(unc)}), "
        f"certified {cert['broken']}/{cert['n']} ({rate(cert)})"
    )


def broken_certificates_text(report: dict[str, Any], saved_in: Optional[str] = None) -> Optional[str]:
    """The bug line when the attack broke a certified image, else None."""
    broken = report["certified"]["broken"]
    if not broken:
        return None
    indices = ", ".join(str(b["index"]) for b in report["certified_broken"])
    return (f"BUG: the attack broke {broken} CERTIFIED image(s) (indices {indices}); "
            "the certificate is unsound" + (f" (patches saved in {saved_in})" if saved_in else ""))
