"""The PyTorch reference defense on tiny maps whose answers are worked out by hand.

Each map is written per class as (H, W) cells; the expected evidence, bounds
and verdicts in the comments follow README.md, "The math, in one screen" step by step.
"""
from __future__ import annotations

import math

import torch
from _torch_certificate import certify

from patchguard.models.reference import margin, masked_evidence, masked_training_logits, robust_masking, window_sums


def local_logits(*classes: list[list[float]]) -> torch.Tensor:
    """One map (1, H, W, C) from C per-class (H, W) grids."""
    return torch.tensor(classes, dtype=torch.float64).permute(1, 2, 0).unsqueeze(0)


def test_window_sums_every_position():
    u = local_logits([[1, 2, 3], [4, 5, 6]])
    sums = window_sums(u, (2, 2))[0, :, :, 0]
    assert sums.tolist() == [[1 + 2 + 4 + 5, 2 + 3 + 5 + 6]]
    assert window_sums(u, (1, 2))[0, :, :, 0].tolist() == [[3, 5], [9, 11]]


def test_masking_removes_the_largest_window_per_class():
    # class 0: S = 6, windows (1x2) 3, 0, 3 -> M = 3 -> evidence 3
    # class 1: S = 4, windows 2, 4, 2 -> M = 4 -> evidence 0 (its evidence sits in one window)
    u = local_logits([[3, 0, 0, 3]], [[0, 2, 2, 0]])
    prediction, evidence = robust_masking(u, (1, 2))
    assert evidence.tolist() == [[3.0, 0.0]]
    assert prediction.tolist() == [0]


def test_masking_can_change_the_prediction():
    # Undefended sums favour class 0 (5 > 4), but all of it is in one cell.
    # class 0: S = 5, M = 5 -> 0;  class 1: S = 4, M (1x2) = 2 -> 2.
    u = local_logits([[5, 0, 0, 0]], [[1, 1, 1, 1]])
    prediction, evidence = robust_masking(u, (1, 2))
    assert evidence.tolist() == [[0.0, 2.0]] and prediction.tolist() == [1]


def test_negative_evidence_is_dropped_and_clipping_caps_cells():
    u = local_logits([[3, -9, -9, 3]], [[-5, 2, 2, -5]])
    # clip(u, 0, inf): the same as the map above -> evidence (3, 0).
    assert robust_masking(u, (1, 2))[1].tolist() == [[3.0, 0.0]]
    # c_h = 1.5: class 0 cells (1.5, 0, 0, 1.5): S = 3, M = 1.5 -> 1.5;
    # class 1 cells (0, 1.5, 1.5, 0): S = 3, M = 3 -> 0.
    assert robust_masking(u, (1, 2), clip=1.5)[1].tolist() == [[1.5, 0.0]]


def test_detection_threshold():
    u = local_logits([[3, 0, 0, 3]], [[0, 2, 2, 0]])
    # T = 0.6: class 0 M = 3 is not > 0.6 * 6 = 3.6 -> not masked, evidence 6;
    # class 1 M = 4 > 0.6 * 4 = 2.4 -> masked, evidence 0.
    assert robust_masking(u, (1, 2), thres=0.6)[1].tolist() == [[6.0, 0.0]]
    # A class with no evidence at all is never masked (S_c > 0 is required).
    zero = local_logits([[0, 0]], [[-1, -1]])
    assert robust_masking(zero, 1, thres=0.5)[1].tolist() == [[0.0, 0.0]]


def test_ties_go_to_the_lowest_class():
    u = local_logits([[1, 1, 1]], [[1, 1, 1]], [[1, 1, 1]])
    assert robust_masking(u, 1)[0].tolist() == [0]
    u = local_logits([[0, 0, 1]], [[1, 1, 1]], [[1, 1, 1]])
    assert robust_masking(u, 1)[0].tolist() == [1]


def test_batches_are_independent():
    a = local_logits([[3, 0, 0, 3]], [[0, 2, 2, 0]])
    b = local_logits([[5, 0, 0, 0]], [[1, 1, 1, 1]])
    prediction, evidence = robust_masking(torch.cat([a, b]), (1, 2))
    assert prediction.tolist() == [0, 1] and evidence.tolist() == [[3.0, 0.0], [0.0, 2.0]]


def test_certified_when_the_label_survives_patch_and_mask():
    # class 0: six cells of 3 (S = 18); class 1: one cell of 1 at the end.
    # Mask = patch = 1x2. For every P: v' has 4 cells of 3, t = 12, and two
    # adjacent 3s always remain, so M0 = 6 and lower(0) = 6.
    # upper(1) = S_1 - sum v[P, 1] <= 1. Margin >= 5: certified.
    u = local_logits([[3] * 6], [[0, 0, 0, 0, 0, 1]])
    assert certify(u, (1, 2)).tolist() == [True]
    assert certify(u, (1, 2), labels=torch.tensor([0])).tolist() == [True]
    # Label 1: lower(1) = t - M0 <= 0 < upper(0) = 18 - 6 = 12.
    assert certify(u, (1, 2), labels=torch.tensor([1])).tolist() == [False]


def test_not_certified_when_patch_and_mask_can_hide_everything():
    # Four cells of 3: the patch zeroes two, the mask removes the other two: lower(0) = 0,
    # and upper(1) = 1 - 0 = 1 at the first position.
    u = local_logits([[3, 3, 3, 3]], [[0, 0, 0, 1]])
    assert certify(u, (1, 2)).tolist() == [False]


def test_exact_ties_are_never_certified():
    # A window covering the whole map: every S - M is 0, every bound is 0.
    u = local_logits([[1, 2], [3, 4]], [[0, 0], [0, 0]])
    assert certify(u, (2, 2), labels=torch.tensor([0])).tolist() == [False]
    # Margin exactly 0: class 0 (2, 2, 2, 2), class 1 (0, 0, 0, 0) with window 1x2:
    # lower(0) = 4 - 2 - 2 = 0 = upper(1) at every P.
    u = local_logits([[2, 2, 2, 2]], [[0, 0, 0, 0]])
    assert certify(u, (1, 2), labels=torch.tensor([0])).tolist() == [False]


def test_non_finite_maps_are_not_certified():
    good = local_logits([[3] * 6], [[0, 0, 0, 0, 0, 1]])
    for value in (math.nan, math.inf, -math.inf):
        bad = good.clone()
        bad[0, 0, 3, 1] = value
        assert certify(bad, (1, 2), labels=torch.tensor([0])).tolist() == [False]


def test_threshold_uses_overlapping_windows_when_nothing_is_detected():
    # class 0: eight cells of 1 (S = 8); class 1: one cell of 2.25 at the end. T = 0.5.
    # Defense: M_0 = 2 is not > 0.5 * 8 -> evidence 8; M_1 = 2.25 > 1.125 -> 0. Prediction 0.
    # Certificate, P = 1x2 at j: t = 6, M0 = 2 <= 0.5 * 6, so lower = t - OV where OV is
    # the best window overlapping P: its cells are P's zeros plus at most one 1 -> OV = 1,
    # lower = 5 at every P. upper(1) = (2.25 - sum v[P, 1]) / (1 - 0.5) = 4.5 at most.
    # Margin 0.5 > 0: certified. (Using t - M0 = 4 instead, the pre-Dec-2021 rule, would not.)
    u = local_logits([[1] * 8], [[0] * 7 + [2.25]])
    assert robust_masking(u, (1, 2), thres=0.5)[1].tolist() == [[8.0, 0.0]]
    assert certify(u, (1, 2), thres=0.5).tolist() == [True]
    # With class 1 raised to 2.75, upper(1) = 5.5 > 5: not certified.
    u = local_logits([[1] * 8], [[0] * 7 + [2.75]])
    assert certify(u, (1, 2), thres=0.5).tolist() == [False]


def test_threshold_uses_all_windows_when_the_patch_would_be_detected():
    # class 0: (4, 4, 1, 1, 1, 1), S = 12; class 1 all 0. T = 0.3, window 1x2.
    # P at j = 2 (cells 2, 3): v' = (4, 4, 0, 0, 1, 1), t = 10, M0 = 8 > 3 -> lower = 10 - 8 = 2.
    # P at j = 0: v' = (0, 0, 1, 1, 1, 1), t = 4, M0 = 2 > 1.2 -> lower = 2.
    # Every other P keeps both 4s or drops one: the smallest lower bound is 2 > upper(1) = 0.
    u = local_logits([[4, 4, 1, 1, 1, 1]], [[0] * 6])
    assert certify(u, (1, 2), thres=0.3).tolist() == [True]
    # A class 1 cell of 1.5 far from P: upper(1) = 1.5 / 0.7 = 2.14 > 2 at P = (0, 0).
    u = local_logits([[4, 4, 1, 1, 1, 1]], [[0] * 5 + [1.5]])
    assert certify(u, (1, 2), thres=0.3).tolist() == [False]


def test_smaller_patch_under_a_larger_mask():
    # class 0: six cells of 2 (S = 12). Mask 1x3.
    # Patch = mask (1x3): P at j = 0 leaves (0, 0, 0, 2, 2, 2): t = 6, M0 = 6, lower 0 -> not certified.
    # Patch 1x1: t = 10 and three adjacent 2s always remain: M0 = 6, lower = 4 at every P.
    u = local_logits([[2] * 6], [[0] * 6])
    assert certify(u, (1, 3)).tolist() == [False]
    assert certify(u, (1, 3), patch_window=(1, 1)).tolist() == [True]
    # class 1 with 3.5 in the last cell: upper(1) = S_1 - best mask window containing P;
    # for P = cell 0 only the window (0..2) contains it, sum 0 -> upper 3.5 < 4: certified.
    u = local_logits([[2] * 6], [[0] * 5 + [3.5]])
    assert certify(u, (1, 3), patch_window=(1, 1)).tolist() == [True]
    u = local_logits([[2] * 6], [[0] * 5 + [4.5]])  # upper 4.5 > 4
    assert certify(u, (1, 3), patch_window=(1, 1)).tolist() == [False]


def test_patch_larger_than_mask_or_map_is_not_certified():
    u = local_logits([[3] * 6], [[0] * 6])
    assert certify(u, (1, 2), patch_window=(1, 3)).tolist() == [False]
    assert certify(u, (1, 7)).tolist() == [False]


def test_certified_label_survives_every_patch_brute_force():
    # Soundness on small random maps: for each certified map, replace the cells of every
    # window position with values from a set of extremes and check the masked prediction.
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(300, 4, 5, 3, generator=generator, dtype=torch.float64) * 2 - 0.5
    u[:, :, :, 0] += 0.6
    window = (2, 2)
    certified = certify(u, window)
    labels = robust_masking(u, window)[0]
    assert 5 < int(certified.sum()) < 300
    attacked, expected = [], []
    for index in certified.nonzero().flatten().tolist():
        for i in range(4 - 1):
            for j in range(5 - 1):
                for c in range(3):
                    for fill in (0.0, 10.0, 100.0):
                        patched = u[index].clone()
                        patched[i : i + 2, j : j + 2, :] = 0.0
                        patched[i : i + 2, j : j + 2, c] = fill
                        attacked.append(patched)
                        expected.append(int(labels[index]))
    predictions = robust_masking(torch.stack(attacked), window)[0]
    assert predictions.tolist() == expected


def test_masked_training_logits():
    # True class loses its largest window, others keep all; both divided by H * W = 4.
    u = local_logits([[3, 0, 0, 3]], [[0, 2, 2, 0]])
    assert masked_training_logits(u, torch.tensor([0]), (1, 2)).tolist() == [[3 / 4, 4 / 4]]
    assert masked_training_logits(u, torch.tensor([1]), (1, 2)).tolist() == [[6 / 4, 0 / 4]]


def test_masked_evidence_equals_robust_masking():
    # The attack's cheaper-gradient evidence must be Algorithm 1's evidence.
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(20, 24, 24, 10, generator=generator) * 3
    for window in (5, (3, 6)):
        for thres, clip in ((0.0, None), (0.2, None), (0.0, 2.0)):
            want = robust_masking(u, window, thres, clip)[1]
            torch.testing.assert_close(masked_evidence(u, window, thres, clip), want, rtol=1e-5, atol=1e-3)


def test_margin_is_own_evidence_minus_best_rival():
    evidence = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
    assert margin(evidence, torch.tensor([0, 1])).tolist() == [1.0, 0.0]
    assert margin(evidence, torch.tensor([1, 0])).tolist() == [-2.0, -5.0]
