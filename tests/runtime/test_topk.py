"""Top-k certificates and certification margins for robust masking: agreement
with a naive loop (ties included), k = 1 equals the ordinary certificate, the
margin decides the certificate, and brute-force soundness of top-k."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from _certify_fixtures import biased_maps, survives
from _feature_fixtures import integer_maps, naive_top_k_certify, survives_extremes

from patchguard.runtime import PatchGuardError, certify, robust_masking
from patchguard.runtime.certificate import per_map
from patchguard.runtime.topk import certification_margin, top_k_certified


def _case(rng: np.random.Generator) -> tuple:
    h, w = (int(v) for v in rng.integers(3, 7, size=2))
    classes = int(rng.integers(1, 6))
    a, b = int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1))
    pa, pb = int(rng.integers(1, a + 1)), int(rng.integers(1, b + 1))
    thres = float(rng.choice([0.0, 0.1, 0.3]))
    clip = [None, 1.0, 3.0][int(rng.integers(3))]
    k = int(rng.integers(1, 4))
    return h, w, classes, (a, b), (pa, pb), thres, clip, k


def test_top_k_agrees_with_naive_loop_and_k1_with_the_certificate() -> None:
    rng = np.random.default_rng(144)
    maps = certified = ties = 0
    while maps < 1200:
        h, w, classes, mask, patch, thres, clip, k = _case(rng)
        if rng.random() < 0.5:
            u = integer_maps(rng, 6, h, w, classes, low=0, high=2, bias=2)
        else:
            u, _ = biased_maps(rng, 6, h, w, classes, strength=1.5)
        y = rng.integers(0, classes, size=u.shape[0])
        got = certify(u, mask, top_k=k, patch_window=patch, thres=thres, clip=clip, labels=y)
        margin = certification_margin(u, mask, top_k=k, patch_window=patch, thres=thres,
                                      clip=clip, labels=y)
        # certify(top_k=1) is the ordinary certificate; the top-k decision at k = 1 must agree with it.
        one = per_map(u, mask, patch, thres, clip, None, functools.partial(top_k_certified, k=1), np.bool_)
        ordinary = certify(u, mask, patch_window=patch, thres=thres, clip=clip)
        assert np.array_equal(one, ordinary)
        if thres == 0.0:  # exact integers: the margin decides (with T > 0 it is a float report)
            assert np.array_equal(got, margin > 0)
        for n in range(u.shape[0]):
            assert got[n] == naive_top_k_certify(u[n], *mask, *patch, thres, clip, int(y[n]), k), (
                n, mask, patch, thres, clip, k)
            ev = robust_masking(u[n : n + 1], mask, thres=thres, clip=clip)[1][0]
            ties += int((ev == ev[y[n]]).sum() > 1)
            certified += int(got[n])
            maps += 1
    print(f"{maps} maps, {ties} with the label's evidence tied, {certified} top-k certified")
    assert certified > 100 and ties > 100


def _in_top_k(evidence: np.ndarray, y: int, k: int) -> np.ndarray:
    """(N,) y's rank (ties to the lowest index, as argmax) is below k."""
    own = evidence[:, y][:, None]
    index = np.arange(evidence.shape[1])[None, :]
    ahead = (evidence > own) | ((evidence == own) & (index < y))
    return ahead.sum(axis=1) < k


def test_top_k_certificates_survive_brute_force() -> None:
    rng = np.random.default_rng(145)
    certified = broken = tried = uncertified = flipped = 0
    while certified < 500:
        tried += 1
        assert tried < 400, f"only {certified} certified cases after {tried} batches"
        h, w, classes, mask, patch, thres, clip, k = _case(rng)
        classes, k = max(classes, k + 2), max(k, 2)
        u, hot = biased_maps(rng, 8, h, w, classes, strength=0.7)
        y = np.where(rng.random(u.shape[0]) < 0.7, hot, rng.integers(0, classes, size=u.shape[0]))
        verdict = certify(u, mask, top_k=k, patch_window=patch, thres=thres, clip=clip, labels=y)
        for n in range(u.shape[0]):
            label = int(y[n])

            def kept(x: np.ndarray, label: int = label, mask: tuple = mask, thres: float = thres,
                     clip: object = clip, k: int = k) -> np.ndarray:
                evidence = robust_masking(x, mask, thres=thres, clip=clip)[1]  # type: ignore[arg-type]
                return np.where(_in_top_k(evidence, label, k), label, -1)

            if verdict[n]:
                certified += 1
                broken += not (survives(u[n], label, *patch, kept, rng, clip)
                               and survives_extremes(u[n], label, *patch, kept))
            elif uncertified < 100 and kept(u[n : n + 1])[0] == label:
                uncertified += 1
                flipped += not survives(u[n], label, *patch, kept, rng, clip)
    print(f"top-k: {certified} certified cases attacked, {broken} broken; the same adversary "
          f"pushed {flipped} of {uncertified} uncertified labels out of the top k")
    assert broken == 0
    assert flipped > 0


def test_bad_top_k_is_one_error() -> None:
    for k in (0, -1, 1.5, True):
        with pytest.raises(PatchGuardError, match="top_k"):
            certify(np.zeros((1, 3, 3, 2)), 1, top_k=k)  # type: ignore[arg-type]


def test_kth_gap_of_the_pruned_classes_is_that_of_every_class() -> None:
    """Only classes whose total can reach the k-th largest ``S_c - M_c`` get window
    sums; over 3-300 classes (float32 and float64, with ties and NaN maps) the k-th
    largest rival gap is bit for bit the one computed over every class."""
    from patchguard.runtime.masking import MaskEvidence, containing_max
    from patchguard.runtime.topk import _kth_gap

    rng = np.random.default_rng(21)
    pruned = 0
    for trial in range(60):
        classes = int(rng.choice([3, 12, 40, 300]))
        h, w = (int(v) for v in rng.integers(5, 12, size=2))
        a, b = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        patch = (int(rng.integers(1, a + 1)), int(rng.integers(1, b + 1)))
        if trial % 3 == 0:
            u = integer_maps(rng, 4, h, w, classes, low=0, high=2, bias=2).astype(np.float64)
        else:
            u, _ = biased_maps(rng, 4, h, w, classes, strength=float(rng.choice([0.5, 3.0])))
        u = u.astype(np.float32) if trial % 2 else u
        if trial % 7 == 0:
            u[0, 0, 0, 0] = np.nan
        y = rng.integers(0, classes, size=u.shape[0])
        evidence = MaskEvidence(u, (a, b), 0.0, [None, 2.0][trial % 2])
        with np.errstate(invalid="ignore", over="ignore"):
            for k in (1, 2, 4):
                got = _kth_gap(evidence, y, patch, k)
                full = MaskEvidence(u, (a, b), 0.0, evidence.clip)
                _, exact, windows = full.ranked(classes)  # every class, in class order
                gap = exact[:, None, None, :] - containing_max(windows, a, b, *patch)
                gap[np.arange(y.shape[0]), :, :, y] = -np.inf
                want = (np.full(gap.shape[:3], -np.inf) if k >= classes
                        else np.sort(gap, axis=3)[..., classes - k])
                finite = evidence.finite
                assert np.array_equal(got[finite], want[finite]), (trial, classes, k)
        pruned += int(evidence.known < classes)
    print(f"{pruned} of 60 trials bounded only a prefix of the ranked classes")
    assert pruned > 10
