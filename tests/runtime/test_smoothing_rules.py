"""DS / crop voting rules against naive loops and an exhaustive adversary on vote tables."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from patchguard.runtime.ablation import (
    band_keep,
    crop_keep,
    crop_starts,
    encode,
    frame_views,
    random_band_keep,
    random_crop_keep,
    unnormalize,
)
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.smoothing import (
    NO_VOTE,
    band_confidences,
    band_delta,
    crop_delta,
    ds_certify,
    ds_counts,
    ds_margin,
    ds_predict,
    ds_votes,
)

# --------------------------------------------------------------------------
# Naive references, written as loops on purpose.

def naive_winner(votes: list[int], classes: int) -> int:
    counts = [0] * classes
    for v in votes:
        if v >= 0:
            counts[v] += 1
    best = 0
    for c in range(1, classes):
        if counts[c] > counts[best]:
            best = c
    return best


def adversary_certified(votes: list[int], classes: int, delta: int, y: int) -> bool:
    """Is y the winner however ANY min(delta, V) views are re-voted (abstaining included)?"""
    if naive_winner(votes, classes) != y:
        return False
    k = min(delta, len(votes))
    for chosen in itertools.combinations(range(len(votes)), k):
        for new in itertools.product(range(-1, classes), repeat=k):
            attacked = list(votes)
            for i, v in zip(chosen, new):
                attacked[i] = v
            if naive_winner(attacked, classes) != y:
                return False
    return True


def formula_certified(counts: list[int], delta: int, y: int) -> bool:
    for c in range(len(counts)):
        if c == y:
            continue
        if counts[y] > counts[c] + 2 * delta:
            continue
        if counts[y] == counts[c] + 2 * delta and y < c:
            continue
        return False
    return True


# --------------------------------------------------------------------------

def test_ds_certificate_equals_an_exhaustive_adversary_on_1000_vote_tables() -> None:
    rng = np.random.default_rng(0)
    checked = certified = ties = 0
    while checked < 1000:
        views, classes, delta = int(rng.integers(1, 7)), int(rng.integers(1, 4)), int(rng.integers(0, 4))
        votes = rng.integers(-1, classes, views)
        y = int(rng.integers(0, classes))
        counts = ds_counts(votes[None], classes)
        got_own = bool(ds_certify(counts, delta)[0])
        got_y = bool(ds_certify(counts, delta, labels=np.array([y]))[0])
        own = naive_winner(list(votes), classes)
        assert got_own == adversary_certified(list(votes), classes, delta, own)
        assert got_y == adversary_certified(list(votes), classes, delta, y)
        assert ds_predict(counts)[0] == own
        checked += 1
        certified += got_own
        ties += len(set(counts[0].tolist())) < classes
    assert 100 < certified < 900 and ties > 100  # both verdicts and many exact ties were exercised


def test_ds_certificate_and_margin_equal_the_per_class_loop_on_large_tables() -> None:
    rng = np.random.default_rng(1)
    votes = rng.integers(-1, 10, (1500, 28))
    # Concentrated tables, so that certificates (and equality cases) occur.
    votes[:700] = np.where(rng.random((700, 28)) < 0.7, rng.integers(0, 3, (700, 1)), votes[:700])
    counts = ds_counts(votes, 10)
    labels = rng.integers(0, 10, 1500)
    for delta in (0, 1, 3, 5, 8):
        own = ds_certify(counts, delta)
        given = ds_certify(counts, delta, labels)
        for n in range(len(counts)):
            row = counts[n].tolist()
            assert own[n] == formula_certified(row, delta, naive_winner(list(votes[n]), 10))
            assert given[n] == formula_certified(row, delta, int(labels[n]))
    margin = ds_margin(counts)
    for n in range(0, 1500, 7):
        largest = max([d for d in range(30) if formula_certified(counts[n].tolist(), d,
                                                                 int(counts[n].argmax()))])
        assert margin[n] == largest
    assert ds_certify(counts, 1).sum() > 100


def test_votes_follow_theta_ties_and_non_finite_views() -> None:
    logits = np.array([[[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [np.nan, 9.0, 0.0], [np.inf, 0.0, 0.0],
                        [0.0, 5.0, 0.0]]])
    votes = ds_votes(logits, theta=0.0)
    assert votes.tolist() == [[0, 0, NO_VOTE, NO_VOTE, 1]]  # ties to the lowest index
    votes = ds_votes(logits, theta=0.4)
    # [2, 2, 0]: softmax 0.468 >= 0.4 votes; uniform 1/3 < 0.4 abstains.
    assert votes.tolist() == [[0, NO_VOTE, NO_VOTE, NO_VOTE, 1]]
    conf = band_confidences(logits)
    assert conf.shape == (1, 1, 5, 3)
    assert np.all(conf[0, 0, 2:4] == 0) and np.allclose(conf[0, 0, [0, 1, 4]].sum(axis=1), 1)
    floor = band_confidences(logits, theta=0.4)             # shares below theta dropped, band by band
    assert np.array_equal(floor, np.where(conf >= 0.4, conf, 0.0))
    assert floor[0, 0, 1].sum() == 0 and floor[0, 0, 0, :2].tolist() == conf[0, 0, 0, :2].tolist()
    with pytest.raises(PatchGuardError, match="theta"):
        ds_votes(logits, theta=1.5)
    with pytest.raises(PatchGuardError, match=r"\(B, V, C\)"):
        ds_votes(np.zeros((3, 4)))


def test_all_abstaining_views_certify_nothing() -> None:
    counts = ds_counts(np.full((2, 5), NO_VOTE), 4)
    assert counts.sum() == 0 and ds_predict(counts).tolist() == [0, 0]
    assert not ds_certify(counts, 1).any()
    assert ds_certify(counts, 0).all()  # delta 0: no patch, class 0 wins the all-zero tie


def _brute_delta(keep: np.ndarray, patch: tuple[int, int]) -> int:
    _, height, width = keep.shape
    best = 0
    for i in range(height - patch[0] + 1):
        for j in range(width - patch[1] + 1):
            best = max(best, int(keep[:, i : i + patch[0], j : j + patch[1]].any(axis=(1, 2)).sum()))
    return best


def test_band_and_crop_delta_equal_a_brute_force_count_over_the_views() -> None:
    rng = np.random.default_rng(2)
    for _ in range(60):
        h, w = int(rng.integers(4, 20)), int(rng.integers(4, 20))
        band = int(rng.integers(1, w + 1))
        p = int(rng.integers(1, w + 1))
        assert band_delta(p, band, w) == _brute_delta(band_keep((h, w), band), (1, p))
        crop = int(rng.integers(1, min(h, w) + 1))
        stride = int(rng.integers(1, 6))
        patch = (int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1)))
        assert crop_delta((h, w), crop, stride, patch) == _brute_delta(crop_keep((h, w), crop, stride), patch)


def test_crop_grid_ends_flush_with_the_border() -> None:
    assert crop_starts(28, 10, 4) == [0, 4, 8, 12, 16, 18]
    assert crop_starts(28, 10, 6) == [0, 6, 12, 18]
    assert crop_keep((28, 28), 10, 6).shape == (16, 28, 28)
    with pytest.raises(PatchGuardError, match="crop side"):
        crop_starts(28, 29, 1)


def test_bands_wrap_around_and_encode_as_x_and_one_minus_x() -> None:
    keep = band_keep((3, 5), 2)
    assert keep.shape == (5, 3, 5)
    assert keep[4, 0].tolist() == [True, False, False, False, True]  # wraps
    assert keep.sum(axis=(1, 2)).tolist() == [6] * 5
    x = np.random.default_rng(3).random((2, 1, 3, 5)).astype(np.float32)
    views = encode(x[:, None], keep[None])                   # (2, 5, 2, 3, 5)
    assert views.shape == (2, 5, 2, 3, 5) and views.dtype == np.float32
    k = keep[None, :, None]
    assert np.array_equal(views[:, :, :1], np.where(k, x[:, None], 0))
    assert np.array_equal(views[:, :, 1:], np.where(k, 1 - x[:, None], 0))
    # A kept black pixel differs from an ablated one.
    black = encode(np.zeros((1, 3, 5), np.float32), keep[0])
    assert black[1, 0, 0] == 1.0 and black[1, 0, 2] == 0.0
    # Runtime path: normalised frames in, frame-major views out.
    mean, std = (0.286,), (0.353,)
    z = (x - 0.286) / 0.353
    flat = frame_views(z, keep, mean, std)
    assert flat.shape == (10, 2, 3, 5)
    assert np.allclose(flat.reshape(views.shape), views, atol=1e-6)
    assert np.allclose(unnormalize(z, mean, std), x, atol=1e-6)


def test_training_keep_masks_are_views_of_the_grid() -> None:
    starts = np.array([0, 3, 27])
    assert np.array_equal(random_band_keep((28, 28), 4, starts), band_keep((28, 28), 4)[starts])
    grid = crop_keep((28, 28), 10, 1).reshape(19, 19, 28, 28)
    tops, lefts = np.array([0, 5, 18]), np.array([18, 2, 0])
    assert np.array_equal(random_crop_keep((28, 28), 10, tops, lefts), grid[tops, lefts])
