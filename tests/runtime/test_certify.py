"""Certification (Algorithm 2, CBN, vote): decision-for-decision agreement with a
naive loop implementation and the PyTorch reference, ties, NaN/inf, patch-size scan."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from _certify_fixtures import biased_maps, naive_cbn_certify, naive_certify, naive_masking, naive_vote_certify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchguard.runtime import (
    PatchGuardError,
    certified_patch_px,
    certify,
    largest_certified,
    predict,
    robust_masking,
    window_shape,
)


def _random_case(rng: np.random.Generator, classes_choice=(2, 3, 5, 20, 70)):
    h, w = (int(v) for v in rng.integers(3, 9, size=2))
    classes = int(rng.choice(classes_choice))
    a, b = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    pa, pb = int(rng.integers(1, a + 1)), int(rng.integers(1, b + 1))
    thres = float(rng.choice([0.0, 0.1, 0.3]))
    clip = [None, 1.0, 2.5][int(rng.integers(3))]
    return h, w, classes, (a, b), (pa, pb), thres, clip


class _ExactCount(logging.Handler):
    """How many patch positions went to the exact lower bound (from the debug log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.exact = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.exact += int(record.getMessage().rsplit(" ", 1)[-1])


def test_mask_certificates_agree_with_naive_and_reference() -> None:
    """>= 1000 maps x 2 label choices; T in {0, 0.1, 0.3}, clip on/off, square and
    rectangular maps and windows, patch windows under the mask, few and many classes."""
    torch = pytest.importorskip("torch")
    import _torch_certificate as reference

    logger = logging.getLogger("patchguard.runtime.certificate")
    counter = _ExactCount()
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    rng = np.random.default_rng(10)
    cases = certified = 0
    seen = set()
    try:
        for trial in range(180):
            h, w, classes, mask, patch, thres, clip = _random_case(rng)
            u, hot = biased_maps(rng, 6, h, w, classes)
            if trial % 2:
                u = u.astype(np.float32)
            own = certify(u, mask, patch_window=patch, thres=thres, clip=clip)
            given_ = certify(u, mask, patch_window=patch, thres=thres, clip=clip, labels=hot)
            tu = torch.from_numpy(u.astype(np.float64))
            ref_own = reference.certify(tu, mask, patch, thres, clip).numpy()
            ref_given = reference.certify(tu, mask, patch, thres, clip, torch.from_numpy(hot)).numpy()
            assert np.array_equal(own, ref_own) and np.array_equal(given_, ref_given)
            predictions = robust_masking(u, mask, thres=thres, clip=clip)[0]
            for n in range(u.shape[0]):
                y = naive_masking(u[n], *mask, thres, clip)
                assert predictions[n] == y
                assert own[n] == naive_certify(u[n], *mask, *patch, thres, clip, y)
                assert given_[n] == naive_certify(u[n], *mask, *patch, thres, clip, int(hot[n]))
                cases += 1
            certified += int(own.sum() + given_.sum())
            seen.add((thres, clip is not None, h == w, mask[0] == mask[1], patch != mask, classes > 16))
    finally:
        logger.removeHandler(counter)
        logger.setLevel(logging.NOTSET)
    print(f"{cases} maps, {certified} certified verdicts of {2 * cases}, "
          f"{counter.exact} positions through the exact bound")
    assert cases >= 1000
    assert 0.2 * 2 * cases < certified < 0.8 * 2 * cases  # not vacuous either way
    assert counter.exact > 0  # the exact lower bound was exercised, not only the cheap tests
    assert {s[0] for s in seen} == {0.0, 0.1, 0.3}
    assert all(any(s[k] for s in seen) and any(not s[k] for s in seen) for k in range(1, 6))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 7), w=st.integers(1, 7),
    classes=st.integers(1, 6),
    thres=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    clip=st.sampled_from([None, 0.5, 1.0, 3.0]),
    data=st.data(),
)
def test_mask_certificates_property(seed, h, w, classes, thres, clip, data) -> None:
    a, b = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    pa, pb = data.draw(st.integers(1, a)), data.draw(st.integers(1, b))
    rng = np.random.default_rng(seed)
    u, hot = biased_maps(rng, 3, h, w, classes)
    got = certify(u, (a, b), patch_window=(pa, pb), thres=thres, clip=clip, labels=hot)
    for n in range(3):
        assert got[n] == naive_certify(u[n], a, b, pa, pb, thres, clip, int(hot[n]))


def test_cbn_and_vote_certificates_agree_with_naive() -> None:
    rng = np.random.default_rng(11)
    counts = {"cbn": 0, "vote": 0}
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(3, 9, size=2))
        classes = int(rng.choice([2, 3, 5]))
        window = (int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1)))
        u, hot = biased_maps(rng, 5, h, w, classes, strength=30.0)
        for defense, naive in (("cbn", naive_cbn_certify), ("vote", naive_vote_certify)):
            got = certify(u, window, defense=defense, labels=hot)
            own = certify(u, window, defense=defense)
            predictions = predict(u, defense=defense)
            for n in range(u.shape[0]):
                assert got[n] == naive(u[n], *window, int(hot[n]))
                assert own[n] == naive(u[n], *window, int(predictions[n]))
            counts[defense] += int(got.sum())
    print("certified verdicts:", counts)
    assert counts["cbn"] > 50 and counts["vote"] > 50


def test_exact_ties_are_never_certified() -> None:
    rng = np.random.default_rng(12)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 7, size=2))
        u = np.abs(rng.normal(size=(4, h, w, 3))) * rng.uniform(0.1, 1e6) + np.array([5.0, 0, 0])
        for thres in (0.0, 0.3):
            # A mask as large as the map: every bound is 0, a pure tie.
            assert not certify(u, (h, w), thres=thres).any()
            assert not certify(u, (h, w), thres=thres, labels=np.zeros(4, dtype=int)).any()
        assert not certify(u, (h, w), defense="cbn").any()
        assert not certify(u, (h, w), defense="vote").any()
    # Two identical classes tie in evidence, whatever the window. (Not for the
    # vote: every cell votes the lower one, which then wins soundly.)
    v = np.abs(rng.normal(size=(3, 6, 6, 1)))
    twins = np.concatenate([v, v], axis=3)
    for defense, window in (("mask", 2), ("cbn", 1)):
        assert not certify(twins, window, defense=defense).any()
        assert not certify(twins, window, defense=defense, labels=np.ones(3, dtype=int)).any()


def test_nan_and_inf_are_never_certified() -> None:
    rng = np.random.default_rng(13)
    u = rng.normal(size=(4, 8, 8, 3))
    u[..., 0] += 20.0  # certified by every defense when clean
    for defense in ("mask", "cbn", "vote"):
        assert certify(u, 1, defense=defense).all()
    bad = u.copy()
    bad[1, 3, 3, 0] = np.nan
    bad[2, 0, 0, 1] = np.inf
    bad[3, 7, 7, 2] = -np.inf
    for defense in ("mask", "cbn", "vote"):
        got = certify(bad, 1, defense=defense)
        assert got[0] and not got[1:].any()
        assert not certify(bad, 1, defense=defense, labels=np.zeros(4, dtype=int))[1:].any()
    for clip in (1.0, None):
        assert not certify(bad, 1, clip=clip)[1:].any()
    assert not certify(bad.astype(np.float32), 1, clip=1.0)[1:].any()


def test_largest_certified_is_the_scan_over_patch_windows() -> None:
    rng = np.random.default_rng(14)
    u, hot = biased_maps(rng, 60, 9, 8, 4)
    windows = [(1, 1), (2, 1), (2, 2), (3, 3), (4, 3)]
    for thres, clip, labels in ((0.0, None, None), (0.1, 2.0, hot)):
        index = largest_certified(u, (4, 3), windows, thres=thres, clip=clip, labels=labels)
        each = np.stack([certify(u, (4, 3), patch_window=p, thres=thres, clip=clip, labels=labels)
                         for p in windows], axis=1)
        # Monotone: certified for a patch -> certified for every smaller one.
        assert np.all(each[:, 1:] <= each[:, :-1])
        expected = each.sum(axis=1) - 1
        assert np.array_equal(index, expected)
        assert len(set(index.tolist())) > 2  # a spread of answers, not all -1 or all 4


def test_certified_patch_px_uses_window_shape() -> None:
    rng = np.random.default_rng(15)
    u, _ = biased_maps(rng, 40, 10, 10, 3)
    sizes, r, s = [2, 6, 10, 14], 5, 2
    px = certified_patch_px(u, sizes, r, s)
    windows = [window_shape(p, r, s) for p in sizes]
    index = largest_certified(u, windows[-1], windows)
    assert np.array_equal(px, np.array([0] + sizes)[index + 1])
    assert set(px.tolist()) - {0} and 0 in px


@pytest.mark.parametrize("call, message", [
    (lambda u: certify(u, 3, patch_window=4), "larger than the 3x3 mask"),
    (lambda u: certify(u, 9), "larger than the 6x6 map"),
    (lambda u: certify(u, 3, labels=np.array([0, 1])), "expected 3 labels"),
    (lambda u: certify(u, 3, labels=np.array([0, 1, 7])), r"in \[0, 2\)"),
    (lambda u: certify(u, 3, labels=np.array([0.5, 1, 0])), "integers"),
    (lambda u: certify(u, 3, defense="cbn", patch_window=2), "defense='mask' only"),
    (lambda u: largest_certified(u, 3, [(2, 2), (1, 3)]), "must grow"),
    (lambda u: largest_certified(u, 3, [(2, 2), (4, 4)]), "larger than the 3x3 mask"),
    (lambda u: certified_patch_px(u, [], 5, 2), "at least one"),
])
def test_certify_input_errors(call, message) -> None:
    u = np.random.default_rng(16).normal(size=(3, 6, 6, 2))
    with pytest.raises(PatchGuardError, match=message):
        call(u)


def test_batches_chunk_without_changing_results() -> None:
    """A batch large enough to be processed in several chunks gives the same
    verdicts as the maps one by one."""
    rng = np.random.default_rng(17)
    u, _ = biased_maps(rng, 700, 12, 12, 3)
    whole = certify(u, 4, thres=0.1)
    single = np.array([certify(u[n : n + 1], 4, thres=0.1)[0] for n in range(0, 700, 7)])
    assert np.array_equal(whole[::7], single)
