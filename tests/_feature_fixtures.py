"""Naive loop implementations of the defenses read from one BagNet pass beyond
robust masking (README.md, "The math, in one screen"), written straight from the math, one map
at a time, with explicit cell masks and no integral images. Deliberately slow
and plain: the vectorized code in patchguard.runtime must agree with them.

They decide on the same exact grid values as the runtime (patchguard.runtime.grid:
each cell mapped on its own), with plain sums (exact: grid integers) and
exact rational comparisons where T enters, so ties are ties here too."""
from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Callable, Optional

import numpy as np
from _certify_fixtures import keeps_label

from patchguard.runtime.grid import grid_for, to_grid


def grid_values(u: np.ndarray, clip: Optional[float]) -> np.ndarray:
    """``clip(u, 0, c_h)`` of one (H, W, C) map on the exact grid (integers)."""
    return to_grid(np.asarray(u, dtype=np.float64)[None], grid_for((1,) + u.shape, clip))[0]


def signed_grid_values(u: np.ndarray) -> tuple[np.ndarray, float]:
    """u of one map on the signed grid (integers) and the grid's logits per step."""
    grid = grid_for((1,) + u.shape, None)
    x = np.asarray(u, dtype=np.float64)[None]
    return (to_grid(x, grid) - to_grid(-x, grid))[0], grid.resolution


def naive_mask_starts(size: int, patch: int, per_axis: int) -> tuple[list[int], int]:
    stride = int(np.ceil((size - patch + 1) / per_axis))
    side = min(patch + stride - 1, size)
    starts = [x for x in range(0, size - side + 1, stride)]
    if size - side not in starts:
        starts.append(size - side)
    return starts, side


def naive_masks(h: int, w: int, pa: int, pb: int, k: int) -> list[np.ndarray]:
    """Boolean (H, W) cell masks, row-major over the grid."""
    rows, ma = naive_mask_starts(h, pa, k)
    cols, mb = naive_mask_starts(w, pb, k)
    out = []
    for r in rows:
        for c in cols:
            m = np.zeros((h, w), dtype=bool)
            m[r : r + ma, c : c + mb] = True
            out.append(m)
    return out


def _outside_scores(v: np.ndarray, removed: np.ndarray) -> np.ndarray:
    return np.array([float(v[:, :, c][~removed].sum()) for c in range(v.shape[2])])


def naive_double(u: np.ndarray, pa: int, pb: int, k: int, clip: Optional[float]) -> int:
    """PatchCleanser Algorithm 1 on one (H, W, C) map, masks applied to cells."""
    v = grid_values(u, clip)
    masks = naive_masks(u.shape[0], u.shape[1], pa, pb, k)
    first = [int(np.argmax(_outside_scores(v, m))) for m in masks]
    counts = np.bincount(first, minlength=u.shape[2])
    majority = int(np.argmax(counts))
    if all(p == first[0] for p in first):
        return first[0]
    for i, mi in enumerate(masks):
        if first[i] == majority:
            continue
        if all(int(np.argmax(_outside_scores(v, mi | mj))) == first[i] for mj in masks):
            return first[i]
    return majority


def naive_double_certify(u: np.ndarray, pa: int, pb: int, k: int, clip: Optional[float],
                         y: int) -> bool:
    """Every two-mask prediction (argmax, ties to the lowest index) is y."""
    if not np.isfinite(u).all():
        return False
    v = grid_values(u, clip)
    masks = naive_masks(u.shape[0], u.shape[1], pa, pb, k)
    for mi, mj in itertools.combinations_with_replacement(masks, 2):
        if int(np.argmax(_outside_scores(v, mi | mj))) != y:
            return False
    return True


def integer_maps(rng: np.random.Generator, batch: int, h: int, w: int, classes: int,
                 low: int = -2, high: int = 4, bias: int = 3) -> np.ndarray:
    """Small-integer maps: every sum is exact in float64, so exact ties are common
    and both implementations see them as ties."""
    u = rng.integers(low, high, size=(batch, h, w, classes)).astype(np.float64)
    hot = rng.integers(0, classes, size=batch)
    u[np.arange(batch), :, :, hot] += rng.integers(0, bias, size=batch)[:, None, None]
    return u


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def naive_window_views(u: np.ndarray, a: int, b: int) -> list[tuple[int, float]]:
    """(prediction, confidence) of every (a, b) window of one (H, W, C) map."""
    h, w, _ = u.shape
    q, step = signed_grid_values(u)
    out = []
    for i, j in itertools.product(range(h - a + 1), range(w - b + 1)):
        keep = np.ones((h, w), dtype=bool)
        keep[i : i + a, j : j + b] = False
        kept = q[keep].sum(axis=0)
        out.append((int(np.argmax(kept)), float(_softmax(kept * step / (h * w)).max())))
    return out


def naive_detect(u: np.ndarray, a: int, b: int, tau: float) -> tuple[int, bool]:
    """PatchGuard++ on one map: (argmax of the mean logits, alert)."""
    if not np.isfinite(u).all():
        return -1, True
    label = int(np.argmax(signed_grid_values(u)[0].sum(axis=(0, 1))))
    return label, any(p != label and conf > tau for p, conf in naive_window_views(u, a, b))


def naive_certify_detection(u: np.ndarray, a: int, b: int, tau: float, y: int) -> bool:
    if not np.isfinite(u).all() or int(np.argmax(signed_grid_values(u)[0].sum(axis=(0, 1)))) != y:
        return False
    return all(p == y and conf > tau for p, conf in naive_window_views(u, a, b))


def naive_top_k_certify(u: np.ndarray, a: int, b: int, pa: int, pb: int, thres: float,
                        clip: Optional[float], y: int, k: int) -> bool:
    """Algorithm 2's bounds at every position, exactly (grid integers, T as a
    fraction); y's lower bound must beat the k-th largest upper bound of the
    other classes (an exact tie does not)."""
    from _certify_fixtures import _overlaps, naive_window_sums

    if not np.isfinite(u).all():
        return False
    v = grid_values(u, clip)
    h, w, classes = v.shape
    t_frac = Fraction(thres)
    totals = v.sum(axis=(0, 1))
    sums = [naive_window_sums(v[:, :, c], a, b) for c in range(classes)]
    for p in itertools.product(range(h - pa + 1), range(w - pb + 1)):
        containing = [wi for wi in sums[0] if wi[0] <= p[0] and p[0] + pa <= wi[0] + a
                      and wi[1] <= p[1] and p[1] + pb <= wi[1] + b]
        uppers = sorted(((Fraction(int(totals[c])) - int(max(sums[c][wi] for wi in containing)))
                         / (1 - t_frac) for c in range(classes) if c != y), reverse=True)
        if len(uppers) < k:
            continue
        vp = v[:, :, y].copy()
        vp[p[0] : p[0] + pa, p[1] : p[1] + pb] = 0.0
        t = int(vp.sum())
        zeroed = naive_window_sums(vp, a, b)
        m0 = int(max(zeroed.values()))
        ov = int(max(s for wi, s in zeroed.items() if _overlaps(wi, p, a, b, pa, pb)))
        lower = t - m0 if (thres == 0 or m0 > t_frac * t) else t - ov
        if not lower > uppers[k - 1]:
            return False
    return True


def survives_extremes(u: np.ndarray, y: int, pa: int, pb: int,
                      predict_one: Callable[[np.ndarray], np.ndarray]) -> bool:
    """The brute-force adversary's float extremes at every (pa, pb) position:
    +-1e300, +-float32 max, 1e16 on one class with -1e16 on the others (the
    magnitudes that break float sums); True if the prediction stays y."""
    classes = u.shape[2]
    big = float(np.finfo(np.float32).max)
    contents = [np.full((pa, pb, classes), v) for v in (1e300, -1e300, big, -big)]
    for c in range(classes):
        spike = np.full((pa, pb, classes), -1e16)
        spike[:, :, c] = 1e16
        contents.append(spike)
        huge = np.zeros((pa, pb, classes))
        huge[:, :, c] = 1e300
        contents.append(huge)
    return keeps_label(u, y, pa, pb, contents, predict_one)
