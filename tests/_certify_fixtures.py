"""Helpers for the masking / certification tests: a naive loop implementation
written straight from README.md, "The math, in one screen", random maps near the decision
boundary, and a brute-force patch adversary. Deliberately slow and plain."""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional

import numpy as np

# ----------------------------------------------------------------------------
# Naive implementation (one image at a time, explicit window loops).


def naive_clip(u: np.ndarray, clip: Optional[float]) -> np.ndarray:
    v = np.maximum(np.asarray(u, dtype=np.float64), 0.0)
    return np.minimum(v, clip) if clip is not None else v


def naive_window_sums(m: np.ndarray, a: int, b: int) -> dict:
    """{(i, j): sum of m[i:i+a, j:j+b]} for every window inside (H, W)."""
    h, w = m.shape
    return {(i, j): float(m[i : i + a, j : j + b].sum())
            for i in range(h - a + 1) for j in range(w - b + 1)}


def naive_masking(u: np.ndarray, a: int, b: int, thres: float, clip: Optional[float]) -> int:
    """Algorithm 1 on one (H, W, C) map."""
    v = naive_clip(u, clip)
    evidence = []
    for c in range(v.shape[2]):
        s = float(v[:, :, c].sum())
        m = max(naive_window_sums(v[:, :, c], a, b).values())
        evidence.append(s - m if (s > 0 and m > thres * s) else s)
    return int(np.argmax(evidence))


def _overlaps(w: tuple, p: tuple, a: int, b: int, pa: int, pb: int) -> bool:
    return w[0] < p[0] + pa and p[0] < w[0] + a and w[1] < p[1] + pb and p[1] < w[1] + b


def naive_certify(u: np.ndarray, a: int, b: int, pa: int, pb: int, thres: float,
                  clip: Optional[float], y: int) -> bool:
    """Algorithm 2 (with the smaller-patch extension) on one (H, W, C) map."""
    if not np.isfinite(u).all():
        return False
    v = naive_clip(u, clip)
    h, w, classes = v.shape
    totals = v.sum(axis=(0, 1))
    tol = 1e-9 * max(1.0, float(totals.max()))
    sums = [naive_window_sums(v[:, :, c], a, b) for c in range(classes)]
    for p in itertools.product(range(h - pa + 1), range(w - pb + 1)):
        containing = [wi for wi in sums[0] if wi[0] <= p[0] and p[0] + pa <= wi[0] + a
                      and wi[1] <= p[1] and p[1] + pb <= wi[1] + b]
        upper = max((float(totals[c]) - max(sums[c][wi] for wi in containing)) / (1 - thres)
                    for c in range(classes) if c != y) if classes > 1 else -np.inf
        vp = v[:, :, y].copy()
        vp[p[0] : p[0] + pa, p[1] : p[1] + pb] = 0.0
        t = float(vp.sum())
        zeroed = naive_window_sums(vp, a, b)
        m0 = max(zeroed.values())
        ov = max(s for wi, s in zeroed.items() if _overlaps(wi, p, a, b, pa, pb))
        lower = t - m0 if (thres == 0 or m0 > thres * t) else t - ov
        if not lower - upper > tol:
            return False
    return True


def naive_cbn(u: np.ndarray) -> int:
    return int(np.argmax(np.tanh(0.05 * u.astype(np.float64) - 1.0).sum(axis=(0, 1))))


def naive_cbn_certify(u: np.ndarray, a: int, b: int, y: int) -> bool:
    if not np.isfinite(u).all():
        return False
    f = np.tanh(0.05 * u.astype(np.float64) - 1.0)
    h, w, classes = f.shape
    for i, j in itertools.product(range(h - a + 1), range(w - b + 1)):
        outside = np.ones((h, w), dtype=bool)
        outside[i : i + a, j : j + b] = False
        for c in range(classes):
            if c != y and not (f[outside][:, y] - f[outside][:, c]).sum() > 2 * a * b + 1e-9 * max(1, h * w):
                return False
    return True


def naive_vote(u: np.ndarray) -> int:
    votes = u.argmax(axis=2).ravel()
    return int(np.argmax(np.bincount(votes, minlength=u.shape[2])))


def naive_vote_certify(u: np.ndarray, a: int, b: int, y: int) -> bool:
    if not np.isfinite(u).all():
        return False
    votes = u.argmax(axis=2)
    h, w, classes = u.shape
    for i, j in itertools.product(range(h - a + 1), range(w - b + 1)):
        outside = np.ones((h, w), dtype=bool)
        outside[i : i + a, j : j + b] = False
        counts = np.bincount(votes[outside], minlength=classes)
        for c in range(classes):
            if c != y and not counts[y] > counts[c] + a * b:
                return False
    return True


# ----------------------------------------------------------------------------
# Random maps near the decision boundary.


def biased_maps(rng: np.random.Generator, batch: int, h: int, w: int, classes: int,
                strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Maps (B, H, W, C) where one class per map carries a random bias, so a
    good share is certified and a good share is not. Returns (maps, biased class)."""
    u = rng.normal(0.0, 1.0, size=(batch, h, w, classes))
    hot = rng.integers(0, classes, size=batch)
    bias = rng.uniform(0.0, 2.0 * strength, size=batch)
    u[np.arange(batch), :, :, hot] += bias[:, None, None]
    # A few bright spots (what a strong window of evidence looks like).
    spots = rng.random((batch, h, w, classes)) < 0.03
    u = u + spots * rng.uniform(0.0, 6.0, size=u.shape)
    return u, hot


# ----------------------------------------------------------------------------
# Brute-force adversary.


def patch_contents(rng: np.random.Generator, pa: int, pb: int, classes: int,
                   clip: Optional[float], scale: float) -> Iterator[np.ndarray]:
    """Many (pa, pb, C) contents a patch could produce."""
    top = clip if clip is not None else 10.0 * scale
    yield np.zeros((pa, pb, classes))
    yield np.full((pa, pb, classes), -1e6)
    yield np.full((pa, pb, classes), top)
    yield np.full((pa, pb, classes), 1e6)
    for _ in range(3):
        yield rng.uniform(-top, top, size=(pa, pb, classes))
    for c in range(classes):
        for level in (0.05, 0.2, 0.5, 1.0, 2.0, 4.0, 1e3):
            spike = np.zeros((pa, pb, classes))
            spike[:, :, c] = level * scale
            yield spike
            over_floor = np.full((pa, pb, classes), -1e6)
            over_floor[:, :, c] = level * scale if level < 1e3 else 1e6
            yield over_floor
            single = np.zeros((pa, pb, classes))
            single[rng.integers(pa), rng.integers(pb), c] = level * scale * pa * pb
            yield single


def survives(u: np.ndarray, y: int, pa: int, pb: int, predict_one: Callable[[np.ndarray], np.ndarray],
             rng: np.random.Generator, clip: Optional[float] = None) -> bool:
    """True if no tried patch content at any (pa, pb) position changes the prediction from y.

    ``predict_one`` maps a batch (N, H, W, C) to predictions (N,); every
    position's contents are stacked into one batch.
    """
    scale = float(np.abs(u).max()) + 1.0
    contents = list(patch_contents(rng, pa, pb, u.shape[2], clip, scale))
    return keeps_label(u, y, pa, pb, contents, predict_one)


def keeps_label(u: np.ndarray, y: int, pa: int, pb: int, contents: list[np.ndarray],
                predict_one: Callable[[np.ndarray], np.ndarray]) -> bool:
    """True if writing each of ``contents`` (pa, pb, C) at every (pa, pb)
    position of u (H, W, C) leaves the prediction y; one batch for all."""
    h, w, _ = u.shape
    attacked = []
    for i, j in itertools.product(range(h - pa + 1), range(w - pb + 1)):
        for content in contents:
            x = u.copy()
            x[i : i + pa, j : j + pb] = content
            attacked.append(x)
    return bool((predict_one(np.stack(attacked)) == y).all())
