"""A pixel-space adversary for the view defenses (DS, Mask-DS, crop voting).

For one image and a p x p patch it writes contents into EVERY patch position
of the uint8 image, rebuilds the views of each attacked image from its
pixels and scores them through the real model. A view whose keep mask misses
the patch is built from exactly the clean image's pixels (the encoding reads
kept pixels only), so it is scored once, on the clean image; the tests check
that premise by comparing full view sets too (:func:`changed_views`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from patchguard.runtime.ablation import encode, unnormalize
from patchguard.runtime.preprocess import normalize

Score = Callable[[np.ndarray], np.ndarray]


def contents(p: int, index: int, rng: np.random.Generator) -> np.ndarray:
    """Patch contents cycling over black, white, random, and a checkerboard of both extremes."""
    kind = index % 4
    if kind == 0:
        return np.zeros((p, p), np.uint8)
    if kind == 1:
        return np.full((p, p), 255, np.uint8)
    if kind == 2:
        return rng.integers(0, 256, (p, p)).astype(np.uint8)
    return (255 * ((np.arange(p)[:, None] + np.arange(p)[None, :]) % 2)).astype(np.uint8)


def attacked_images(image: np.ndarray, p: int, per_position: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every patch position (i, j) with ``per_position`` contents each (cycling
    through :func:`contents` across positions): images (A, H, W) and corners (A, 2)."""
    height, width = image.shape
    corners = [(i, j) for i in range(height - p + 1) for j in range(width - p + 1)]
    out, where = [], []
    k = 0
    for i, j in corners:
        for _ in range(per_position):
            bad = image.copy()
            bad[i : i + p, j : j + p] = contents(p, k, rng)
            out.append(bad)
            where.append((i, j))
            k += 1
    return np.stack(out), np.asarray(where)


def attacked_logits(record, keep: np.ndarray, clean_logits: np.ndarray, images: np.ndarray,
                    corners: np.ndarray, p: int, score: Score, batch: int = 4096) -> np.ndarray:
    """Logits (A, V, K) of every view of each attacked image: the views the patch
    meets rebuilt from the attacked pixels and scored, the others as on the clean image."""
    a_count = len(images)
    x = unnormalize(normalize(images, record), record.mean, record.std)   # (A, C, H, W) in [0, 1]
    meets = np.stack([keep[:, i : i + p, j : j + p].any(axis=(1, 2)) for i, j in corners])  # (A, V)
    attack, view = np.nonzero(meets)
    logits = np.broadcast_to(clean_logits, (a_count,) + clean_logits.shape).copy()
    for s in range(0, len(attack), batch):
        a, v = attack[s : s + batch], view[s : s + batch]
        logits[a, v] = score(encode(x[a], keep[v]))
    return logits


def changed_views(record, keep: np.ndarray, clean: np.ndarray, attacked: np.ndarray) -> np.ndarray:
    """Which views (V,) of the attacked image differ from the clean image's, built in full."""
    both = normalize(np.stack([clean, attacked]), record)
    x = unnormalize(both, record.mean, record.std)
    views = encode(x[:, None], keep[None])                      # (2, V, 2C, H, W)
    return (views[0] != views[1]).any(axis=(1, 2, 3))
