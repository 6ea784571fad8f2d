"""Robust masking (Algorithm 1), CBN and vote predictions, input checks, torch-freeness."""
from __future__ import annotations

import numpy as np
import pytest
from _certify_fixtures import biased_maps, naive_cbn, naive_masking, naive_vote

from patchguard.runtime import NO_LABEL, PatchGuardError, predict, robust_masking
from patchguard.runtime.grid import grid_for


def _cases(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for trial in range(count):
        h, w = (int(v) for v in rng.integers(2, 9, size=2))
        classes = int(rng.choice([1, 2, 3, 5, 20, 70]))
        a, b = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        thres = float(rng.choice([0.0, 0.1, 0.3]))
        clip = [None, 1.0, 2.5][int(rng.integers(3))]
        u, _ = biased_maps(rng, 5, h, w, classes)
        if trial % 2:
            u = u.astype(np.float32)
        yield u, (a, b), thres, clip


def test_robust_masking_matches_naive_loops() -> None:
    checked = 0
    for u, (a, b), thres, clip in _cases(0, 150):
        predictions, evidence = robust_masking(u, (a, b), thres=thres, clip=clip)
        assert predictions.shape == (u.shape[0],) and evidence.shape == (u.shape[0], u.shape[3])
        for n in range(u.shape[0]):
            assert predictions[n] == naive_masking(u[n], a, b, thres, clip)
            checked += 1
        assert np.array_equal(predictions, predict(u, (a, b), thres=thres, clip=clip))
    assert checked == 750


def test_robust_masking_matches_torch_reference() -> None:
    torch = pytest.importorskip("torch")
    from patchguard.models import reference

    for u, window, thres, clip in _cases(1, 100):
        predictions, evidence = robust_masking(u, window, thres=thres, clip=clip)
        ref_pred, ref_evidence = reference.robust_masking(
            torch.from_numpy(u.astype(np.float64)), window, thres, clip)
        assert np.array_equal(predictions, ref_pred.numpy())
        # The runtime's evidence lives on the exact grid: each cell rounds down
        # by less than one grid step.
        step = grid_for(u.shape, clip).resolution * u.shape[1] * u.shape[2]
        np.testing.assert_allclose(evidence, ref_evidence.numpy(), rtol=1e-12, atol=step)


def test_ties_go_to_the_lowest_class() -> None:
    rng = np.random.default_rng(2)
    u = rng.normal(size=(4, 5, 6, 3))
    # A window as large as the map removes everything: every evidence is exactly 0.
    predictions, evidence = robust_masking(u, (5, 6))
    assert np.all(evidence == 0.0) and np.all(predictions == 0)
    # Two identical classes: the lower index wins.
    same = np.concatenate([u[..., :1], u[..., :1] * 0.5, u[..., :1]], axis=3)
    assert np.all(robust_masking(same, 2)[0] != 2)


def test_nan_and_inf_maps_get_no_label() -> None:
    rng = np.random.default_rng(3)
    u = rng.normal(size=(4, 6, 6, 3)) + np.array([2.0, 0, 0])
    u[1, 2, 3, 0] = np.nan
    u[2, 0, 0, 2] = np.inf
    u[3, 5, 5, 1] = -np.inf
    for clip in (None, 1.0):
        predictions, evidence = robust_masking(u, 2, clip=clip)
        assert predictions[0] == 0 and np.all(predictions[1:] == NO_LABEL)
        assert np.isnan(evidence[1:]).all() and np.isfinite(evidence[0]).all()
    for defense in ("cbn", "vote"):
        assert np.all(predict(u, defense=defense)[1:] == NO_LABEL)


def test_cbn_and_vote_predictions_match_naive() -> None:
    for u, _, _, _ in _cases(4, 60):
        cbn = predict(u, defense="cbn")
        vote = predict(u, defense="vote")
        for n in range(u.shape[0]):
            assert cbn[n] == naive_cbn(u[n])
            assert vote[n] == naive_vote(u[n])


@pytest.mark.parametrize("call, message", [
    (lambda: robust_masking(np.zeros((3, 4, 4)), 2), "(B, H, W, C)"),
    (lambda: robust_masking(np.zeros((1, 4, 4, 2)), 5), "larger than the 4x4 map"),
    (lambda: robust_masking(np.zeros((1, 4, 4, 2)), (2, 5)), "larger than the 4x4 map"),
    (lambda: robust_masking(np.zeros((1, 4, 4, 2)), 0), "positive integer"),
    (lambda: robust_masking(np.zeros((1, 4, 4, 2)), 2, thres=1.0), "thres"),
    (lambda: robust_masking(np.zeros((1, 4, 4, 2)), 2, thres=-0.1), "thres"),
    (lambda: robust_masking(np.zeros((1, 4, 4, 2)), 2, clip=0.0), "clip"),
    (lambda: robust_masking(np.array([[[["a"]]]]), 1), "numbers"),
    (lambda: predict(np.zeros((1, 4, 4, 2)), 2, defense="median"), "unknown defense"),
    (lambda: predict(np.zeros((1, 4, 4, 2))), "needs a mask window"),
])
def test_bad_input_is_a_patchguard_error(call, message) -> None:
    with pytest.raises(PatchGuardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
