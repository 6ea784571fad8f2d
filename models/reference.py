"""PyTorch robust masking (PatchGuard Alg. 1) for training and the attack.

Written for clarity, not speed: training with feature masking uses
:func:`masked_training_logits`, the patch attack descends
:func:`masked_evidence`. Certificates (Alg. 2) come from the runtime's numpy
``certify`` only; the tests keep a torch transcription of Alg. 2 as an
independent oracle (``tests/_torch_certificate.py``). Shapes: local logits
``u`` are (B, H, W, C); windows are (a, b) cells.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..runtime.geometry import IntOrPair, as_pair, mask_grid


def clipped(u: torch.Tensor, clip: Optional[float] = None) -> torch.Tensor:
    """v = clip(u, 0, c_h): negative evidence is dropped, c_h caps each cell."""
    return u.clamp(min=0.0, max=clip if clip is not None else None)


def window_sums(v: torch.Tensor, window: IntOrPair) -> torch.Tensor:
    """Sum of every (a, b) window: (B, H, W, C) -> (B, H - a + 1, W - b + 1, C)."""
    a, b = as_pair(window)
    # divisor_override=1 sums without dividing: multiplying an average back by
    # a * b rounds, which turns exact ties (a window as large as the map) into
    # spurious differences and breaks the lowest-index tie rule.
    sums = F.avg_pool2d(v.permute(0, 3, 1, 2), (a, b), stride=1, divisor_override=1)
    return sums.permute(0, 2, 3, 1)


def totals(v: torch.Tensor) -> torch.Tensor:
    """S_c (B, C), summed by the same operation as :func:`window_sums` so that
    a window covering the whole map has exactly the total's value."""
    return window_sums(v, (v.shape[1], v.shape[2]))[:, 0, 0]


def robust_masking(
    u: torch.Tensor, window: IntOrPair, thres: float = 0.0, clip: Optional[float] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1: returns predictions (B,) and masked evidence (B, C)."""
    v = clipped(u, clip)
    total = totals(v)
    largest = window_sums(v, window).amax(dim=(1, 2))
    masked = (total > 0) & (largest > thres * total)
    evidence = torch.where(masked, total - largest, total)
    return evidence.argmax(dim=1), evidence


def masked_evidence(
    u: torch.Tensor, window: IntOrPair, thres: float = 0.0, clip: Optional[float] = None
) -> torch.Tensor:
    """Algorithm 1's masked evidence (B, C), equal to :func:`robust_masking`'s,
    with a cheaper gradient (what an attack descends).

    The largest window sum M_c is found without autograd and then summed
    again over just that window: same value, same (sub)gradient as the max
    over all windows, without back-propagating through every window sum.
    """
    v = clipped(u, clip)
    total = v.sum(dim=(1, 2))
    a, b = as_pair(window)
    with torch.no_grad():
        sums = window_sums(v, (a, b))  # (B, H-a+1, W-b+1, C)
        cols = sums.shape[2]
        where = sums.flatten(1, 2).argmax(dim=1)  # (B, C)
    rows = (where // cols)[:, :, None, None] + torch.arange(a)[:, None]  # (B, C, a, 1)
    columns = (where % cols)[:, :, None, None] + torch.arange(b)  # (B, C, 1, b)
    batch = torch.arange(len(v))[:, None, None, None]
    klass = torch.arange(v.shape[-1])[None, :, None, None]
    largest = v[batch, rows, columns, klass].sum(dim=(2, 3))  # (B, C)
    masked = (total > 0) & (largest > thres * total)
    return torch.where(masked, total - largest, total)


def margin(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """e_y - max_{c != y} e_c per row of evidence (B, C): below 0, y is not the prediction."""
    rows = torch.arange(len(labels))
    own = evidence[rows, labels]
    others = evidence.clone()
    others[rows, labels] = -math.inf
    return own - others.amax(dim=1)


def masked_training_logits(
    u: torch.Tensor, labels: torch.Tensor, window: IntOrPair, clip: Optional[float] = None
) -> torch.Tensor:
    """Evidence with the true class's strongest window removed, per cell mean.

    PatchGuard's provable adversarial training: the worst a patch can do to
    the true class is hide its best window, so train on what is left.
    """
    v = clipped(u, clip)
    cells = v.shape[1] * v.shape[2]
    total = v.sum(dim=(1, 2))
    largest = window_sums(v, window).amax(dim=(1, 2))
    true = F.one_hot(labels, v.shape[-1]).bool()
    return torch.where(true, total - largest, total) / cells


def double_masked_training_logits(
    u: torch.Tensor, labels: torch.Tensor, window: IntOrPair, masks_per_axis: IntOrPair = 6,
    clip: Optional[float] = None,
) -> torch.Tensor:
    """Two-mask scores of the worst mask pair for the true class, per cell mean.

    Feature-space double masking certifies y when every pair of masks leaves
    y on top (:mod:`patchguard.runtime.double_masking`), so train on the pair
    (i <= j, i = j included) that leaves y the smallest margin. The scores of
    all pairs are one matrix product of v with the cells each pair keeps.
    """
    v = clipped(u, clip)
    batch, height, width, classes = v.shape
    masks = mask_grid((height, width), window, masks_per_axis)
    covered = torch.zeros(masks.count, height, width, dtype=torch.bool)
    for i in range(masks.count):
        top, left, bottom, right = masks.box(i)
        covered[i, top:bottom, left:right] = True
    keep = ~(covered[:, None] | covered[None, :])                   # (M, M, H, W)
    keep = keep.reshape(masks.count * masks.count, height * width).to(v.dtype)
    scores = torch.einsum("bnc,pn->bpc", v.reshape(batch, height * width, classes), keep)
    true = F.one_hot(labels, classes).bool()[:, None, :]            # (B, 1, C)
    own = scores.masked_fill(~true, 0.0).sum(dim=2)
    rival = scores.masked_fill(true, -math.inf).amax(dim=2)
    worst = (own - rival).argmin(dim=1)                              # (B,)
    return scores[torch.arange(batch), worst] / (height * width)
