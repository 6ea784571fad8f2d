"""Every certified verdict survives a brute-force patch adversary (mask, CBN, vote).

On small random maps, each certified (map, label) is attacked at every patch
position with many contents (zeros, extremes, random, one-class spikes of many
sizes, single-cell spikes); the defense's prediction must stay the label.
The counts of certified cases are asserted so the test cannot pass vacuously.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from _certify_fixtures import biased_maps, survives

from patchguard.runtime import certify, predict, robust_masking


def test_mask_certificates_survive_brute_force() -> None:
    rng = np.random.default_rng(20)
    certified = broken = tried = uncertified = flipped = 0
    while certified < 500:
        tried += 1
        assert tried < 400, f"only {certified} certified cases after {tried} batches"
        h, w = (int(v) for v in rng.integers(3, 7, size=2))
        classes = int(rng.integers(2, 5))
        a, b = int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1))
        pa, pb = int(rng.integers(1, a + 1)), int(rng.integers(1, b + 1))
        thres = float(rng.choice([0.0, 0.1, 0.3]))
        clip = [None, 1.0, 3.0][int(rng.integers(3))]
        u, _ = biased_maps(rng, 8, h, w, classes, strength=1.5)
        verdict = certify(u, (a, b), patch_window=(pa, pb), thres=thres, clip=clip)
        labels = robust_masking(u, (a, b), thres=thres, clip=clip)[0]

        def masked(x: np.ndarray, a: int = a, b: int = b, thres: float = thres,
                   clip: Optional[float] = clip) -> np.ndarray:
            return robust_masking(x, (a, b), thres=thres, clip=clip)[0]

        for n in np.flatnonzero(verdict):
            certified += 1
            if not survives(u[n], int(labels[n]), pa, pb, masked, rng, clip):
                broken += 1
        for n in np.flatnonzero(~verdict)[:1]:
            uncertified += 1
            flipped += not survives(u[n], int(labels[n]), pa, pb, masked, rng, clip)
    print(f"mask: {certified} certified cases attacked, {broken} broken; "
          f"the same adversary flipped {flipped} of {uncertified} uncertified ones")
    assert broken == 0
    assert flipped > 0.2 * uncertified  # the adversary has teeth


def _aggregation_soundness(defense: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    certified = broken = tried = uncertified = flipped = 0
    while certified < 500:
        tried += 1
        assert tried < 400, f"only {certified} certified {defense} cases after {tried} batches"
        h, w = (int(v) for v in rng.integers(4, 8, size=2))
        classes = int(rng.integers(2, 5))
        window = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        u, _ = biased_maps(rng, 8, h, w, classes, strength=40.0 if defense == "cbn" else 2.0)
        verdict = certify(u, window, defense=defense)
        labels = predict(u, defense=defense)

        def aggregate(x: np.ndarray) -> np.ndarray:
            return predict(x, defense=defense)

        for n in np.flatnonzero(verdict):
            certified += 1
            if not survives(u[n], int(labels[n]), *window, aggregate, rng):
                broken += 1
        for n in np.flatnonzero(~verdict)[:1]:
            uncertified += 1
            flipped += not survives(u[n], int(labels[n]), *window, aggregate, rng)
    print(f"{defense}: {certified} certified cases attacked, {broken} broken; "
          f"the same adversary flipped {flipped} of {uncertified} uncertified ones")
    assert broken == 0
    assert flipped > 0  # the adversary has teeth


def test_cbn_certificates_survive_brute_force() -> None:
    _aggregation_soundness("cbn", 21)


def test_vote_certificates_survive_brute_force() -> None:
    _aggregation_soundness("vote", 22)


def test_vote_certificate_counts_classes_that_got_no_vote() -> None:
    """A class with no vote anywhere still has out_c(P) = 0: the patch can give it
    all |P| cells, so y needs out_y(P) > |P|. Maps where every cell votes y (the
    only class present in the batch) must be checked against that rival too."""
    rng = np.random.default_rng(23)

    def aggregate(x: np.ndarray) -> np.ndarray:
        return predict(x, defense="vote")

    checked = 0
    for h, w, a, b in [(2, 2, 2, 2), (3, 3, 3, 3), (4, 4, 3, 3), (4, 5, 2, 3), (5, 5, 2, 2)]:
        u = np.zeros((1, h, w, 3))
        u[..., 1] = 1.0  # every cell votes class 1; classes 0 and 2 get no vote
        verdict = bool(certify(u, (a, b), defense="vote")[0])
        # Brute force: the patch turns its cells to any class; certified iff no flip.
        assert survives(u[0], 1, a, b, aggregate, rng) or not verdict, (h, w, a, b)
        # Exact rule with the absent rival: out_y(P) = H W - a b > a b.
        assert verdict == (h * w - a * b > a * b), (h, w, a, b)
        checked += 1
    assert checked == 5
