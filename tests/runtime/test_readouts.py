"""Per-frame readouts from one map: they agree with the defenses they summarise."""
from __future__ import annotations

import numpy as np
from _certify_fixtures import biased_maps

from patchguard.runtime import certify, robust_masking
from patchguard.runtime.detection import detect, softmax
from patchguard.runtime.double_masking import DoubleMaskEvidence, double_masking_certified
from patchguard.runtime.geometry import mask_grid
from patchguard.runtime.masking import MaskEvidence
from patchguard.runtime.readouts import read_double, read_mask, spread
from patchguard.runtime.topk import certification_margin


def test_mask_readouts_match_the_defenses() -> None:
    rng = np.random.default_rng(147)
    u, _ = biased_maps(rng, 60, 7, 6, 5, strength=1.5)
    u[3, 2, 2, 1] = np.nan
    labels, evidence_all = robust_masking(u, 3)
    evidence = MaskEvidence(u, (3, 3), 0.0, None)
    out = read_mask(u, evidence, labels, (3, 3), tau=0.6, k=3)
    assert np.array_equal(out.margin > 0, certify(u, 3) & (labels >= 0))
    assert np.array_equal(out.top_k_certified, certify(u, 3, top_k=3))
    assert np.array_equal(out.alert, detect(u, 3, tau=0.6).alerts)
    finite = labels >= 0
    assert np.isnan(out.confidence[~finite]).all() and np.isnan(out.margin[~finite]).all()
    expected = softmax(evidence_all[finite] / 42)[np.arange(finite.sum()), labels[finite]]
    assert np.allclose(out.margin[finite], certification_margin(u, 3)[finite])
    assert np.allclose(out.confidence[finite], expected)
    assert np.array_equal(out.top_labels[finite, 0], labels[finite])
    assert np.allclose(out.top_scores[finite], np.sort(evidence_all[finite], axis=1)[:, ::-1][:, :3] / 42)


def test_double_readouts_match_the_certificate() -> None:
    rng = np.random.default_rng(148)
    u, _ = biased_maps(rng, 60, 8, 8, 4, strength=1.5)
    masks = mask_grid((8, 8), (2, 2), 3)
    evidence = DoubleMaskEvidence.of(u, masks, None)
    labels = evidence.predictions()
    out = read_double(u, evidence, labels, (2, 2), tau=0.6, k=2)
    certified = double_masking_certified(u, 2, masks_per_axis=3)[1]
    assert (out.margin[certified] >= 0).all() and certified[out.margin > 0].all()
    assert out.top_k_certified is None and out.top_labels.shape == (60, 2)
    assert (out.confidence > 0).all() and (out.confidence <= 1).all()


def test_uniform_maps_have_no_spread() -> None:
    u = np.ones((2, 5, 5, 3)) * np.array([1.0, 4.0, -2.0])
    u[1, 0, 0] += 1.0
    assert spread(u)[0] == 0.0 and spread(u)[1] > 0.0
