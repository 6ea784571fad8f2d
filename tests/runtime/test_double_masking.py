"""Feature-space double masking: agreement with the naive loops (ties included)
and brute-force soundness of every certificate (the mask grid: test_geometry.py)."""
from __future__ import annotations

import numpy as np
import pytest
from _certify_fixtures import biased_maps, survives
from _feature_fixtures import integer_maps, naive_double, naive_double_certify, survives_extremes

from patchguard.runtime import PatchGuardError
from patchguard.runtime.double_masking import DoubleMaskEvidence, double_masking, double_masking_certified
from patchguard.runtime.geometry import mask_grid


def test_patch_window_larger_than_map_is_one_error() -> None:
    with pytest.raises(PatchGuardError, match="larger than"):
        double_masking(np.zeros((1, 4, 4, 3)), 5)


def _random_case(rng: np.random.Generator) -> tuple:
    h, w = (int(v) for v in rng.integers(3, 8, size=2))
    classes = int(rng.integers(1, 5))
    pa, pb = int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1))
    k = int(rng.integers(1, 6))
    clip = [None, 2.0][int(rng.integers(2))]
    return h, w, classes, (pa, pb), k, clip


def _has_tie(u: np.ndarray, patch: tuple, k: int, clip: object) -> bool:
    """Does some two-mask score vector of the map have a tie at its top?"""
    masks = mask_grid(u.shape[:2], patch, k)
    scores = DoubleMaskEvidence.of(u[None], masks, clip).scores  # type: ignore[arg-type]
    return bool(((scores == scores.max(axis=3, keepdims=True)).sum(axis=3) > 1).any())


def test_double_masking_agrees_with_naive_loops_including_ties() -> None:
    rng = np.random.default_rng(140)
    maps = ties = certified = 0
    while maps < 1200:
        h, w, classes, patch, k, clip = _random_case(rng)
        if rng.random() < 0.5:
            u = integer_maps(rng, 6, h, w, classes, low=-1, high=2)
        else:
            u, _ = biased_maps(rng, 6, h, w, classes, strength=1.5)
        labels = double_masking(u, patch, masks_per_axis=k, clip=clip)
        own = double_masking_certified(u, patch, masks_per_axis=k, clip=clip)[1]
        y = rng.integers(0, classes, size=u.shape[0])
        given = double_masking_certified(u, patch, masks_per_axis=k, clip=clip, labels=y)[1]
        for n in range(u.shape[0]):
            expected = naive_double(u[n], *patch, k, clip)
            assert labels[n] == expected, (n, h, w, patch, k, clip)
            assert own[n] == naive_double_certify(u[n], *patch, k, clip, expected)
            assert given[n] == naive_double_certify(u[n], *patch, k, clip, int(y[n]))
            ties += int(_has_tie(u[n], patch, k, clip))
            certified += int(own[n])
            maps += 1
    print(f"{maps} maps, {ties} with an exact tie at the top of some two-mask score, {certified} certified")
    assert ties > 100 and certified > 100


def test_double_masking_certificates_survive_brute_force() -> None:
    rng = np.random.default_rng(141)
    certified = broken = tried = uncertified = flipped = 0
    while certified < 500:
        tried += 1
        assert tried < 400, f"only {certified} certified cases after {tried} batches"
        h, w, classes, patch, k, clip = _random_case(rng)
        classes = max(classes, 2)
        u, _ = biased_maps(rng, 8, h, w, classes, strength=1.5)
        verdict = double_masking_certified(u, patch, masks_per_axis=k, clip=clip)[1]
        labels = double_masking(u, patch, masks_per_axis=k, clip=clip)

        def defended(x: np.ndarray, patch: tuple = patch, k: int = k, clip: object = clip) -> np.ndarray:
            return double_masking(x, patch, masks_per_axis=k, clip=clip)  # type: ignore[arg-type]

        for n in np.flatnonzero(verdict):
            certified += 1
            if not (survives(u[n], int(labels[n]), *patch, defended, rng, clip)
                    and survives_extremes(u[n], int(labels[n]), *patch, defended)):
                broken += 1
        for n in np.flatnonzero(~verdict)[:1]:
            uncertified += 1
            flipped += not survives(u[n], int(labels[n]), *patch, defended, rng, clip)
    print(f"double: {certified} certified cases attacked, {broken} broken; "
          f"the same adversary flipped {flipped} of {uncertified} uncertified ones")
    assert broken == 0
    assert flipped > 0.2 * uncertified


def test_nan_maps_get_no_label_and_no_certificate() -> None:
    u = np.ones((2, 5, 5, 3))
    u[0, 1, 1, 0] = np.nan
    u[1, :, :, 2] += 5
    assert double_masking(u, 2, masks_per_axis=2).tolist() == [-1, 2]
    assert double_masking_certified(u, 2, masks_per_axis=2)[1].tolist() == [False, True]


def test_predict_and_certify_take_defense_double() -> None:
    from patchguard.runtime import certify, predict

    rng = np.random.default_rng(146)
    u, _ = biased_maps(rng, 20, 8, 8, 4, strength=1.5)
    assert np.array_equal(predict(u, 3, defense="double", masks_per_axis=3),
                          double_masking(u, 3, masks_per_axis=3))
    assert np.array_equal(certify(u, 3, defense="double"), double_masking_certified(u, 3)[1])
    with pytest.raises(PatchGuardError, match="masks_per_axis"):
        certify(u, 3, defense="mask", masks_per_axis=3)
    with pytest.raises(PatchGuardError, match="thres"):
        predict(u, 3, defense="double", thres=0.1)
    with pytest.raises(PatchGuardError, match="top_k"):
        certify(u, 3, defense="double", top_k=2)
