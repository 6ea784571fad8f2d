"""Algorithm 2 in PyTorch, transcribed loop by loop from README.md, "The math, in one screen".

A test oracle, independent of the runtime's numpy certificate (integral
images, pruning, exact grid arithmetic), which the tests check against it.
It lives with the tests: the library certifies with the runtime only.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from patchguard.models.reference import clipped, robust_masking, window_sums
from patchguard.runtime.geometry import IntOrPair, as_pair


def certify(u: torch.Tensor, window: IntOrPair, patch_window: Optional[IntOrPair] = None, thres: float = 0.0,
            clip: Optional[float] = None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Algorithm 2 with a patch window (pa, pb) no larger than the mask (a, b).

    For every patch position P: the upper bound of each class c != y is
    ``(S_c - max_{W >= P} sum v[W, c]) / (1 - T)``; the lower bound of y is
    ``t - M0`` (or ``t - OV`` when T > 0 and ``M0 <= T t``) on ``v'`` = v[..., y]
    with P zeroed. Certified iff lower > upper for every P and c, by more
    than a tiny tolerance. Returns a bool tensor (B,).
    """
    v = clipped(u.double(), clip)
    batch, height, width, classes = v.shape
    a, b = as_pair(window)
    pa, pb = as_pair(patch_window if patch_window is not None else window, "patch_window")
    if pa > a or pb > b or a > height or b > width:
        return torch.zeros(batch, dtype=torch.bool)
    if labels is None:
        labels = robust_masking(v, (a, b), thres)[0]
    finite = torch.isfinite(u.reshape(batch, -1)).all(dim=1)
    total = v.sum(dim=(1, 2))
    tolerance = 1e-9 * torch.clamp(total.amax(dim=1), min=1.0)
    mask_sums = window_sums(v, (a, b))  # (B, H-a+1, W-b+1, C)
    rows = torch.arange(batch)
    vy = v[rows, :, :, labels]  # (B, H, W)
    other = torch.ones(batch, classes, dtype=torch.bool)
    other[rows, labels] = False
    smallest = torch.full((batch,), math.inf, dtype=torch.float64)
    for i in range(height - pa + 1):
        for j in range(width - pb + 1):
            # Mask windows that contain P, and those that overlap P.
            wi = slice(max(0, i + pa - a), min(i, height - a) + 1)
            wj = slice(max(0, j + pb - b), min(j, width - b) + 1)
            best_covering = mask_sums[:, wi, wj, :].amax(dim=(1, 2))
            upper = (total - best_covering) / (1.0 - thres)
            upper = torch.where(other, upper, torch.full_like(upper, -math.inf)).amax(dim=1)

            vp = vy.clone()
            vp[:, i : i + pa, j : j + pb] = 0.0
            t = vp.sum(dim=(1, 2))
            sums = window_sums(vp.unsqueeze(-1), (a, b))[..., 0]
            m0 = sums.amax(dim=(1, 2))
            oi = slice(max(0, i - a + 1), min(i + pa - 1, height - a) + 1)
            oj = slice(max(0, j - b + 1), min(j + pb - 1, width - b) + 1)
            ov = sums[:, oi, oj].amax(dim=(1, 2))
            use_m0 = (thres == 0.0) | (m0 > thres * t)
            lower = torch.where(use_m0, t - m0, t - ov)
            smallest = torch.minimum(smallest, lower - upper)
    return (smallest > tolerance) & finite
