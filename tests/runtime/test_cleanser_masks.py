"""PatchCleanser's pixel masks: the geometry of the issue, and coverage of every patch position
(the one-axis arithmetic: test_geometry.py)."""
from __future__ import annotations

import numpy as np

from patchguard.runtime.cleanser import pixel_mask_set


def test_fashion_mnist_geometry():
    masks = pixel_mask_set((28, 28), 5, 6)
    assert masks.stride == (4, 4) and masks.side == (8, 8)
    assert masks.rows.starts == (0, 4, 8, 12, 16, 20)
    assert masks.count == 36 and masks.pair_count == 666
    assert masks.keep.shape == (36, 28, 28)
    # Each mask drops exactly its 8x8 rectangle.
    assert (masks.keep.reshape(36, -1).sum(axis=1) == 28 * 28 - 64).all()
    top, left, bottom, right = masks.boxes[7]
    assert (top, left, bottom, right) == (4, 4, 12, 12)
    assert not masks.keep[7, 4:12, 4:12].any() and masks.keep[7].sum() == 28 * 28 - 64


def _covered(masks) -> np.ndarray:
    """covered[top, left]: some mask contains the patch with that corner (brute force over masks)."""
    h, w = masks.keep.shape[1:]
    ph, pw = masks.rows.patch, masks.cols.patch
    dropped = ~masks.keep
    out = np.zeros((h - ph + 1, w - pw + 1), dtype=bool)
    for top in range(h - ph + 1):
        for left in range(w - pw + 1):
            out[top, left] = dropped[:, top : top + ph, left : left + pw].all(axis=(1, 2)).any()
    return out


def test_every_patch_position_lies_inside_a_mask_for_100_random_geometries():
    rng = np.random.default_rng(13)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        ph, pw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        kh, kw = (int(v) for v in rng.integers(1, 9, size=2))
        masks = pixel_mask_set((h, w), (ph, pw), (kh, kw))
        assert len(masks.rows.starts) <= kh and len(masks.cols.starts) <= kw
        covered = _covered(masks)
        assert covered.all(), f"uncovered patch for N={h}x{w}, p={ph}x{pw}, k={kh}x{kw}"
        for top, left in [(0, 0), (h - ph, w - pw), (int(rng.integers(0, h - ph + 1)), 0)]:
            index = masks.covering(top, left)
            t, lft, b, r = masks.boxes[index]
            assert t <= top and top + ph <= b and lft <= left and left + pw <= r
