"""Decisions and certificates agree for every finite input (runtime/grid.py).

Regression tests for the numeric attacks of issue 10 (catastrophic
cancellation, overflow, ties broken by rounding, truncated windows), and a
brute-force adversary that writes extremes (+-1e16, +-1e300, the largest
float32, mixtures) into one patch window of certified maps of every
magnitude, dtype, window shape, T and c_h, for mask, CBN and vote.
"""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from patchguard.runtime import PatchGuardError, certify, predict, robust_masking, window_shape
from patchguard.runtime.grid import compare, grid_for, to_grid

F32_MAX = float(np.finfo(np.float32).max)


def _issue_map(dtype: type) -> np.ndarray:
    u = np.zeros((1, 6, 6, 2), dtype=dtype)
    u[..., 0] = 1
    u[..., 1] = 0.4375
    return u


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cancellation_cannot_flip_a_certified_label(dtype: type) -> None:
    u = _issue_map(dtype)
    assert certify(u, 2)[0] and predict(u, 2)[0] == 0
    attacked = u.copy()
    attacked[0, 4:6, 4:6, 1] = 1.8197008586098708e16  # one 2x2 window only
    attacked[0, 4:6, 4:6, 0] = 0
    assert predict(attacked, 2)[0] == 0
    assert robust_masking(attacked, 2)[0][0] == 0
    # The issue's variant at logits of about 1e14 with margins of 1e-4 (relative): on the
    # grid every such cell saturates, so the classes tie exactly. A tie is never certified,
    # and the decision on the clean and the attacked map is the same lowest class.
    big = _issue_map(dtype) * 1e14
    big[..., 1] = big[..., 0] * (1 - 1e-4)
    assert not certify(big, 2)[0] and predict(big, 2)[0] == 0
    hit = big.copy()
    hit[0, :2, :2, 1] = F32_MAX
    assert predict(hit, 2)[0] == 0 and robust_masking(hit, 2)[0][0] == 0


def test_overflowing_cells_do_not_split_the_decision() -> None:
    u = _issue_map(np.float64)
    u[0, :2, :2, 1] = 1e308
    labels, evidence = robust_masking(u, 2)
    assert labels[0] == predict(u, 2)[0] != -1
    assert np.isfinite(evidence).all()
    u[0, :, :, 0] = 1e308  # every cell: totals of 36e308 on floats
    assert robust_masking(u, 2)[0][0] == predict(u, 2)[0] != -1


def test_exact_ties_go_to_the_lowest_class() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.0, 0.3, size=(7, 7))
    # Class 1 holds the transposed cells of class 0: the same totals and the
    # same multiset of square window sums, reached through different float sums.
    u = np.stack([base, base.T], axis=-1)[None]
    for clip in (None, 0.1, 0.2):  # 0.1 and 0.2 are not representable
        for defense in ("mask", "cbn"):
            assert predict(u, 3, defense=defense, clip=clip)[0] == 0
            assert predict(u[..., ::-1], 3, defense=defense, clip=clip)[0] == 0
        assert robust_masking(u, 3, clip=clip)[0][0] == 0


def test_grid_is_cell_wise_and_dtype_free() -> None:
    rng = np.random.default_rng(4)
    u = (rng.normal(size=(3, 5, 6, 4)) * 10).astype(np.float32)
    grid = grid_for(u.shape, None)
    q = to_grid(u, grid)
    assert np.array_equal(q, to_grid(u.astype(np.float64), grid))
    assert np.array_equal(q[1:2], to_grid(u[1:2], grid))  # no dependence on the other maps
    assert q.min() >= 0 and q.max() <= grid.unit and np.array_equal(q, np.floor(q))
    assert 30 * grid.unit <= 2 ** 51
    extreme = to_grid(np.array([1e300, -1e300, F32_MAX, np.inf]), grid)
    assert list(extreme) == [grid.unit, 0, grid.unit, grid.unit]


@pytest.mark.parametrize("clip", [None, 1.0, 3.0, 1e-300, 1e300])
def test_signed_grid_is_the_difference_of_two_clipped_grids(clip: float | None) -> None:
    """Provable detection's signed grid (one clip to [-unit, unit], toward zero) gives the
    integers of ``to_grid(u) - to_grid(-u)`` cell by cell, extremes and both dtypes included."""
    rng = np.random.default_rng(9)
    u = rng.normal(size=(4, 5, 6, 7)) * 10.0 ** rng.integers(-40, 40, size=(4, 5, 6, 7))
    u.flat[:12] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300, F32_MAX, -F32_MAX, 5e-324, -5e-324, 1.0]
    with np.errstate(over="ignore"):
        narrow = u.astype(np.float32)  # huge values become +-inf
    for x in (u, narrow):
        grid = grid_for(x.shape, clip)
        with np.errstate(over="ignore", invalid="ignore"):  # as every caller (huge u / tiny c_h)
            signed = to_grid(x, grid, signed=True)
            difference = to_grid(x, grid) - to_grid(np.negative(x), grid)
        assert np.array_equal(signed, difference, equal_nan=True)
        assert np.nanmax(np.abs(signed)) <= grid.unit

def test_compare_is_exact() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-2 ** 52, 2 ** 52, size=400).astype(np.float64)
    y = rng.integers(-2 ** 52, 2 ** 52, size=400).astype(np.float64)
    for r in (Fraction(1, 10), Fraction(0.1), Fraction(0.5), Fraction(5e-324), Fraction(1) - Fraction(1e-17)):
        # near ties on purpose: x = round(r * y) + {-1, 0, 1}
        near = np.array([float(round(r * int(v))) for v in y]) + rng.integers(-1, 2, size=y.size)
        for xs in (x, near):
            got = compare(xs, y, r)
            want = [(d > 0) - (d < 0) for d in (Fraction(int(a)) - r * int(b) for a, b in zip(xs, y))]
            assert list(got) == want


@pytest.mark.parametrize("window,ok", [
    (2, (2, 2)), (np.int64(2), (2, 2)), ((np.int32(2), 3), (2, 3)), ([3, 2], (3, 2)),
    (2.7, None), ((2.7, 2), None), (2.0, None), (True, None), ((2, False), None), (0, None),
    (-1, None), ((0, 2), None), ("2", None), ((1, 2, 3), None), (np.float64(2), None),
])
def test_geometry_arguments_are_positive_integers(window, ok) -> None:
    u = np.ones((1, 4, 4, 2))
    if ok is None:
        for call in (lambda: robust_masking(u, window), lambda: certify(u, window),
                     lambda: predict(u, window), lambda: certify(u, 2, patch_window=window),
                     lambda: window_shape(window, 5, 1)):
            with pytest.raises(PatchGuardError, match="positive integer"):
                call()
    else:
        assert robust_masking(u, window)[0].shape == (1,)
        assert window_shape(window, 1, 1) == ok


# --------------------------------------------------------------------------
# Brute force over magnitudes.

_FILLS64 = (1e16, -1e16, 1e300, -1e300, F32_MAX, -F32_MAX, 0.0)
_FILLS32 = (1e16, -1e16, F32_MAX, -F32_MAX, 0.0, 1e30)


def _fills(rng: np.random.Generator, shape: tuple, dtype: type, label: int) -> list[np.ndarray]:
    """Patch contents: each extreme everywhere, all for one class, random mixtures."""
    values = _FILLS32 if dtype == np.float32 else _FILLS64
    out = [np.full(shape, v) for v in values]
    for c in range(shape[-1]):
        for v in values[:3]:
            one = np.zeros(shape)
            one[..., c] = v
            out.append(one)
    out += [rng.choice(values, size=shape) for _ in range(6)]
    # against the label: the label dropped to the floor, everyone else at the top
    against = np.full(shape, values[0])
    against[..., label] = values[1]
    out.append(against)
    return out


def _random_map(rng: np.random.Generator, kind: str, scale: float, h: int, w: int,
                classes: int) -> np.ndarray:
    u = rng.normal(size=(1, h, w, classes)) * scale
    u[0, :, :, int(rng.integers(classes))] += scale * rng.uniform(0.5, 2.5)
    if kind == "int":
        return np.rint(u).astype(np.int64)
    return u.astype(np.float32 if kind == "float32" else np.float64)


def test_certified_labels_survive_extremes_of_any_magnitude() -> None:
    rng = np.random.default_rng(11)
    counts = {"mask": 0, "cbn": 0, "vote": 0}
    attacks = 0
    kinds = ("int", "float32", "float64")
    scales = (1.0, 1e3, 1e8, 1e16, 1e100, 1e300)
    for trial in range(700):
        kind, scale = kinds[trial % 3], scales[(trial // 3) % len(scales)]
        if kind != "float64" and scale > 1e30:
            scale = 1e16 if kind == "int" else 1e30
        h, w = (int(v) for v in rng.integers(3, 7, size=2))
        classes = int(rng.integers(2, 4))
        u = _random_map(rng, kind, scale, h, w, classes)
        defense = ("mask", "cbn", "vote")[trial % 7 % 3]
        a, b = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        a, b = min(a, h), min(b, w)
        if defense == "mask":
            pa, pb = int(rng.integers(1, a + 1)), int(rng.integers(1, b + 1))
            thres = float(rng.choice([0.0, 0.0, 0.2, 0.5]))
            clip = [None, None, 1.0, scale * 0.7, 0.1][int(rng.integers(5))]
            kw = dict(thres=thres, clip=clip)
            verdict = certify(u, (a, b), patch_window=(pa, pb), **kw)[0]
            label = predict(u, (a, b), **kw)[0]
            assert robust_masking(u, (a, b), **kw)[0][0] == label
        else:
            pa, pb, kw = a, b, {}
            verdict = certify(u, (a, b), defense=defense)[0]
            label = predict(u, defense=defense)[0]
        if not verdict:
            continue
        counts[defense] += 1
        dtype = np.float32 if kind == "float32" else np.float64
        for i, j in itertools.product(range(h - pa + 1), range(w - pb + 1)):
            for fill in _fills(rng, (pa, pb, classes), dtype, int(label)):
                hit = u.astype(dtype)
                hit[0, i:i + pa, j:j + pb] = fill
                attacks += 1
                if defense == "mask":
                    got = predict(hit, (a, b), **kw)[0]
                    assert robust_masking(hit, (a, b), **kw)[0][0] == got
                else:
                    got = predict(hit, defense=defense)[0]
                assert got == label, (defense, kind, scale, (a, b), (pa, pb), kw, (i, j))
    print(counts, attacks)
    assert min(counts.values()) >= 20
