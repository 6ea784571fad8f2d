"""Mask-DS: robust masking with windows that wrap around the band map, against
naive loops (Algorithms 1 and 2 on a circle) and a brute-force adversary."""
from __future__ import annotations

import numpy as np
import pytest

from patchguard.runtime.certificate import largest_certified
from patchguard.runtime.defenses import certify, predict
from patchguard.runtime.masking import robust_masking
from patchguard.runtime.smoothing import band_confidences, mask_ds_window


def cyclic(start: int, length: int, width: int) -> set[int]:
    return {(start + k) % width for k in range(length)}


def naive_predict(v: np.ndarray, b: int, thres: float) -> int:
    """Algorithm 1 on a (W, C) map whose windows of b columns wrap around."""
    width, classes = v.shape
    best, label = -np.inf, 0
    for c in range(classes):
        total = sum(v[:, c])
        largest = max(sum(v[k, c] for k in cyclic(s, b, width)) for s in range(width))
        evidence = total - largest if total > 0 and largest > thres * total else total
        if evidence > best:
            best, label = evidence, c
    return label


def naive_certified(v: np.ndarray, b: int, pb: int, thres: float, y: int) -> bool:
    """Algorithm 2 on the circle, every patch position of pb columns, plain loops."""
    width, classes = v.shape
    windows = [cyclic(s, b, width) for s in range(width)]
    for j in range(width):
        patch = cyclic(j, pb, width)
        zeroed = [0.0 if k in patch else v[k, y] for k in range(width)]
        t = sum(zeroed)
        m0 = max(sum(zeroed[k] for k in w) for w in windows)
        ov = max(sum(zeroed[k] for k in w) for w in windows if w & patch)
        lower = t - m0 if thres == 0 or m0 > thres * t else t - ov
        for c in range(classes):
            if c == y:
                continue
            inside = max(sum(v[k, c] for k in w) for w in windows if patch <= w)
            upper = (sum(v[:, c]) - inside) / (1 - thres)
            if not lower > upper:
                return False
    return True


def random_map(rng: np.random.Generator, width: int, classes: int) -> np.ndarray:
    """Dyadic values (multiples of 1/4), so sums are exact and ties are frequent."""
    v = rng.integers(0, 3, (width, classes)) / 4.0
    strong = int(rng.integers(0, classes))
    v[:, strong] += rng.integers(0, 2 + width, width) / 4.0  # many maps certify
    return v


def test_wrapped_masking_equals_naive_loops_on_1000_maps_with_ties() -> None:
    rng = np.random.default_rng(0)
    agree = certified = 0
    for n in range(1000):
        width, classes = int(rng.integers(3, 11)), int(rng.integers(2, 5))
        b = int(rng.integers(1, width + 1))
        pb = int(rng.integers(1, b + 1))
        thres = 0.0 if n % 3 else 0.25
        v = random_map(rng, width, classes)
        u = v[None, None]                                   # (1, 1, W, C)
        own = naive_predict(v, b, thres)
        assert predict(u, (1, b), thres=thres, wrap=True)[0] == own
        assert robust_masking(u, (1, b), thres=thres, wrap=True)[0][0] == own
        y = int(rng.integers(0, classes)) if n % 2 else own
        got = bool(certify(u, (1, b), patch_window=(1, pb), thres=thres, labels=np.array([y]),
                                wrap=True)[0])
        assert got == naive_certified(v, b, pb, thres, y), (v, b, pb, thres, y)
        agree += 1
        certified += got
    assert agree == 1000 and certified > 100


def test_wrapping_matters_a_window_over_the_seam_is_masked() -> None:
    # Class 1's evidence sits on both ends of the map: one wrapped window covers it.
    v = np.zeros((1, 1, 8, 2))
    v[0, 0, :, 0] = 0.15
    v[0, 0, [0, 7], 1] = 1.0
    assert predict(v, (1, 2))[0] == 1            # without wrap the seam is never masked whole
    assert predict(v, (1, 2), wrap=True)[0] == 0


def test_certified_mask_ds_labels_survive_a_brute_force_adversary() -> None:
    rng = np.random.default_rng(1)
    width, classes, band = 12, 4, 2
    attacked = 0
    for _ in range(300):
        logits = rng.normal(0, 1, (1, width, classes))
        logits[0, :, int(rng.integers(0, classes))] += rng.uniform(1, 4)
        conf = band_confidences(logits)                     # (1, 1, W, C)
        for p in (1, 2, 3):
            window = mask_ds_window(p, band, width)
            y = predict(conf, window, wrap=True)[0]
            if not certify(conf, window, wrap=True)[0]:
                continue
            for start in range(width):
                cols = [(start + k) % width for k in range(window[1])]
                for trial in range(6):
                    bad = conf.copy()
                    if trial < 4:  # one-hot on every class: the extremes a band can say
                        bad[0, 0, cols] = np.eye(classes)[trial % classes]
                    else:
                        bad[0, 0, cols] = rng.dirichlet(np.ones(classes), len(cols))
                    assert predict(bad, window, wrap=True)[0] == y
                    attacked += 1
    assert attacked > 1000


def test_largest_certified_wraps_too() -> None:
    rng = np.random.default_rng(2)
    conf = band_confidences(rng.normal(0, 2, (50, 10, 3)))
    sizes = [(1, 2), (1, 3), (1, 4)]
    index = largest_certified(conf, (1, 4), sizes, wrap=True)
    for n, best in enumerate(index):
        for s, size in enumerate(sizes):
            expect = bool(certify(conf[n : n + 1], (1, 4), patch_window=size, wrap=True)[0])
            assert expect == (s <= best)


@pytest.mark.parametrize("b", [1, 5, 10])
def test_a_window_as_wide_as_the_map_certifies_nothing(b: int) -> None:
    conf = band_confidences(np.random.default_rng(3).normal(0, 3, (20, 10, 3)))
    certified = certify(conf, (1, 10), patch_window=(1, b), wrap=True)
    assert not certified.any()
