"""Class pruning in robust masking and its certificate agrees with the unpruned
computation on many-class maps.

The runtime computes window sums only for the classes that can matter (by
their totals S_c) and shares them between the prediction, the certificate and
the certified-patch-size search. These tests pit that against the full
evidence of every class (:func:`robust_masking`) and the naive loops of
``_certify_fixtures``, on 200-1000 classes with exact ties and near-ties in
the totals, T > 0, a ceiling c_h, float32 and float64, batch 1 and batches,
plus two built maps where the refuting class ranks low (below decoys, or
last among the candidates).
"""
from __future__ import annotations

import numpy as np
import pytest
from _certify_fixtures import biased_maps, naive_certify, naive_masking

from patchguard.runtime import NO_LABEL, certify, predict, robust_masking
from patchguard.runtime.certificate import largest_certified
from patchguard.runtime.cli.bench import synthetic_logits, synthetic_record
from patchguard.runtime.footprint import camera_threat, patch_side
from patchguard.runtime.pipeline import certify_maps
from patchguard.runtime.preprocess import resize_plan

SETTINGS = [(0.0, None), (0.2, None), (0.0, 2.0), (0.15, 3.0)]


def tied_maps(rng: np.random.Generator, batch: int, size: int, classes: int,
              strength: float) -> np.ndarray:
    """(B, size, size, C) maps whose strongest class has copies: exact ones
    (equal evidence, so the lowest index must win) at lower and higher class
    indices, and spatially shuffled ones (equal totals S_c, other windows)."""
    u, hot = biased_maps(rng, batch, size, size, classes, strength)
    for n in range(batch):
        others = rng.choice(np.delete(np.arange(classes), hot[n]), size=6, replace=False)
        u[n, :, :, others[:2]] = u[n, :, :, hot[n]][None]
        for c in others[2:]:
            cells = rng.permutation(u[n, :, :, hot[n]].ravel())
            u[n, :, :, c] = cells.reshape(size, size)
    return u


def families(rng: np.random.Generator, size: int, classes: int, batch: int
             ) -> list[tuple[bool, np.ndarray]]:
    """(tied, maps): tied maps, a dominant class (few candidates: a ranked
    prefix is enough, often certified), boundary maps and flat maps (most
    classes are candidates), in float64 and float32."""
    dominant = rng.normal(0.0, 1.0, size=(batch, size, size, classes))
    dominant[np.arange(batch), :, :, rng.integers(0, classes, batch)] += rng.uniform(
        1.0, 4.0, size=(batch, 1, 1))
    maps = [(True, tied_maps(rng, batch, size, classes, 1.0)),
            (False, dominant),
            (False, biased_maps(rng, batch, size, size, classes, 2.0)[0]),
            (False, rng.normal(0.0, 1.0, size=(batch, size, size, classes)))]
    return maps + [(tied, m.astype(np.float32)) for tied, m in maps]


@pytest.mark.parametrize("classes", [200, 1000])
@pytest.mark.parametrize("batch", [1, 3])
def test_pruned_predictions_equal_full_evidence(classes: int, batch: int) -> None:
    rng = np.random.default_rng(classes + batch)
    for tied, u in families(rng, 8, classes, batch):
        for thres, clip in SETTINGS:
            pruned = predict(u, (3, 2), thres=thres, clip=clip)
            # Same arithmetic, every class: equal bit for bit, ties included.
            full = robust_masking(u, (3, 2), thres=thres, clip=clip)[0]
            assert pruned.tolist() == full.tolist()
            if not tied:  # shuffled copies tie up to rounding, which the loops sum differently
                assert pruned.tolist() == [naive_masking(m, 3, 2, thres, clip) for m in u]


@pytest.mark.parametrize("classes,batch", [(200, 1), (1000, 1), (300, 4)])
def test_pruned_certificates_equal_naive_loops(classes: int, batch: int) -> None:
    """Own predictions and given labels, patches as large as the mask and
    smaller, and the certified-patch-size scan over the same evidence."""
    rng = np.random.default_rng(7 * classes + batch)
    mask, patches = (3, 3), [(1, 1), (2, 1), (2, 2), (3, 3)]
    verdicts = []
    for _, u in families(rng, 7, classes, batch):
        for thres, clip in SETTINGS if classes == 200 else SETTINGS[::3]:  # naive loops are slow
            own = predict(u, mask, thres=thres, clip=clip)
            given = np.where(rng.random(batch) < 0.5, own, rng.integers(0, classes, batch))
            for labels in (None, given):
                ys = own if labels is None else given
                naive = np.array([[naive_certify(m, *mask, *p, thres, clip, int(y))
                                   for p in patches] for m, y in zip(u, ys)])
                for k, p in enumerate(patches):
                    got = certify(u, mask, patch_window=p, thres=thres, clip=clip, labels=labels)
                    assert got.tolist() == naive[:, k].tolist(), (thres, clip, p)
                scan = largest_certified(u, mask, patches, thres=thres, clip=clip, labels=labels)
                assert scan.tolist() == (naive.sum(axis=1) - 1).tolist()
                verdicts += naive.ravel().tolist()
    assert 0 < sum(verdicts) < len(verdicts)  # certified and refused verdicts both seen


@pytest.mark.parametrize("classes", [200, 1000])
def test_pipeline_shares_evidence_without_changing_verdicts(classes: int) -> None:
    """certify_maps (one evidence per frame) equals predict, certify and the
    certified-size scan run separately, at batch 1 and with a NaN map."""
    record = synthetic_record(26, 26, classes)
    plan = resize_plan((480, 640), record)
    threat = camera_threat(plan, record, patch_side(plan, record, None))
    maps = synthetic_logits(6, 1, 26, 26, classes, seed=classes)
    poisoned = maps[0].copy()
    poisoned[0, 3, 4, 5] = np.nan
    for u in maps + [np.concatenate([maps[1], poisoned, maps[-1]])]:
        v = certify_maps(u, threat, record, 0.0, None)
        labels = predict(u, threat.window)
        assert v.labels.tolist() == labels.tolist()
        safe = np.maximum(labels, 0)
        assert v.certified.tolist() == certify(u, threat.window, labels=safe).tolist()
        index = largest_certified(u, threat.window, threat.patch_windows, labels=safe)
        sizes = np.asarray((0,) + threat.sizes)
        assert v.certified_patch_px.tolist() == sizes[index + 1].tolist()
    assert v.labels[1] == NO_LABEL and not v.certified[1] and v.certified_patch_px[1] == 0


@pytest.mark.parametrize("classes", [40, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_refuting_class_ranked_below_many_decoys(classes: int, dtype: type) -> None:
    """The class that refutes y has a smaller total than twenty decoys, which
    sit in the centre that every mask window covers (their upper bounds are
    0): bounding only the best-ranked classes would certify, the full
    computation must not."""
    u = np.full((1, 7, 7, classes), -1.0)
    y, refuter = 3, classes - 2
    u[0, :, :, y] = 1.0                 # S_y = 49, lowest lower bound 8 (corner patches)
    u[0, :, :, refuter] = 0.4           # S = 19.6, upper bound 19.6 - 10 = 9.6 > 8
    decoys = [c for c in range(classes) if c not in (y, refuter)][:20]
    for c in decoys:
        u[0, 2:5, 2:5, c] = 3.0         # S = 27, inside every 5x5 window
    u = u.astype(dtype)
    assert predict(u, 5).tolist() == [y]
    for patch in [(3, 3), (5, 5)]:
        naive = naive_certify(u[0], 5, 5, *patch, 0.0, None, y)
        assert certify(u, 5, patch_window=patch).tolist() == [naive]
    assert not naive  # the 5x5 patch is refuted, by the low-ranked class
    without = u.copy()
    without[0, :, :, refuter] = -1.0
    assert certify(without, 5).tolist() == [True]  # the decoys alone cannot refute


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_refuting_class_is_the_last_candidate(dtype: type) -> None:
    """100 classes on a 9x9 map, 5x5 mask: y (uniform 1) has its lowest lower
    bound 32 at the corner patches; 24 decoys (all evidence in the centre
    cell, which every window covers) outrank everything but y, so the
    prediction already needs window sums of all classes; the refuter is the
    last class whose total (50.2) reaches y's cheapest bound (31), and its
    upper bound 34.7 beats 32. Dropping the last candidate would certify."""
    classes, y, refuter = 100, 7, 60
    u = np.full((1, 9, 9, classes), -1.0)
    u[0, :, :, y] = 1.0
    u[0, :, :, refuter] = 0.62
    for c in range(20, 44):
        u[0, 4, 4, c] = 60.0
    u = u.astype(dtype)
    assert predict(u, 5).tolist() == [y]
    assert not naive_certify(u[0], 5, 5, 5, 5, 0.0, None, y)
    assert certify(u, 5).tolist() == [False]
    u[0, :, :, refuter] = -1.0
    assert naive_certify(u[0], 5, 5, 5, 5, 0.0, None, y)
    assert certify(u, 5).tolist() == [True]


@pytest.mark.parametrize("clip", [None, 2.0])
def test_many_class_float32_maps_with_extremes(clip: float | None) -> None:
    """The many-class float32 pre-pass (totals for pruning, finiteness) on
    maps with one -inf, +inf or NaN cell (never labelled or certified) and on
    finite maps whose float32 sums overflow (labelled exactly as the full
    evidence does)."""
    rng = np.random.default_rng(11)
    classes, big = 300, float(np.finfo(np.float32).max)
    base = rng.normal(0.0, 1.0, size=(1, 8, 8, classes)).astype(np.float32)
    base[0, :, :, 7] += 1.5
    bad = []
    for value in (-np.inf, np.inf, np.nan):
        u = base.copy()
        u[0, 5, 2, 7 if value != -np.inf else 3] = value
        bad.append(u)
    huge = base.copy()
    huge[0, :4, :4, 9] = big  # finite, but sum u and sum |u| overflow float32
    mixed = base.copy()
    mixed[0, :, :, 4] = np.where(rng.random((8, 8)) < 0.5, big, -big)  # sum u over/underflows
    u = np.concatenate(bad + [huge, mixed, base])
    labels = predict(u, (3, 3), clip=clip)
    assert labels[:3].tolist() == [NO_LABEL] * 3
    assert not certify(u, (3, 3), clip=clip, labels=np.maximum(labels, 0))[:3].any()
    full = robust_masking(u[3:].astype(np.float64), (3, 3), clip=clip)[0]
    assert labels[3:].tolist() == full.tolist()
    assert labels[5] == 7
    if clip is None:  # the huge cells win unless c_h caps them
        assert labels[3] == 9 and labels[4] == 4
    ours = certify(u[3:], (3, 3), clip=clip)
    assert ours.tolist() == [naive_certify(m, 3, 3, 3, 3, 0.0, clip, int(y))
                             for m, y in zip(u[3:].astype(np.float64), full)]
