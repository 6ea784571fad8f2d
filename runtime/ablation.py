"""Ablated views for DS, Mask-DS and crop voting (README.md, "View defenses"), in numpy.

A view keeps a region of the image (a column band, or a square crop) and
ablates everything else. The classifier must tell "ablated" from "black", so
a kept pixel x in [0, 1] (before the record's normalisation) becomes the
channel pair (x, 1 - x) and an ablated one (0, 0): 2C' channels for a C'
channel image (Levine & Feizi's encoding, ``"x,1-x"`` in the record).

Shapes: keep masks are bool (V, H, W) (one per view), images float (..., C', H, W),
encoded views float32 (..., 2C', H, W). :func:`encode` is the one place that
writes the encoding: training (one random keep mask per image) and the
runtime (every view of every frame) both call it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import PatchGuardError
from .geometry import flush_starts

#: The record's name for the (x, 1 - x) encoding.
ENCODING = "x,1-x"


def band_keep(size: Sequence[int], band: int) -> np.ndarray:
    """Keep masks (W, H, W) of the column bands: view i keeps columns
    i .. i + band - 1 (mod W), so there is one view per column and bands wrap around."""
    height, width = int(size[0]), int(size[1])
    if not 1 <= band <= width:
        raise PatchGuardError(f"band width must be between 1 and the image width {width}, got {band}")
    offset = (np.arange(width)[None, :] - np.arange(width)[:, None]) % width  # (view, column)
    return np.broadcast_to((offset < band)[:, None, :], (width, height, width)).copy()


def crop_starts(length: int, crop: int, stride: int) -> list[int]:
    """Starts of the crops along one axis: ``range(0, length - crop + 1, stride)``,
    plus ``length - crop`` when missing (the last crop flush with the border)."""
    if not 1 <= crop <= length:
        raise PatchGuardError(f"crop side must be between 1 and the image side {length}, got {crop}")
    if stride < 1:
        raise PatchGuardError(f"crop stride must be at least 1, got {stride}")
    return flush_starts(length, crop, stride)


def crop_keep(size: Sequence[int], crop: int, stride: int) -> np.ndarray:
    """Keep masks (V, H, W) of the crop grid, row-major over (row start, column start)."""
    height, width = int(size[0]), int(size[1])
    rows, cols = crop_starts(height, crop, stride), crop_starts(width, crop, stride)
    keep = np.zeros((len(rows), len(cols), height, width), dtype=bool)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            keep[i, j, top : top + crop, left : left + crop] = True
    return keep.reshape(-1, height, width)


def random_band_keep(size: Sequence[int], band: int, starts: np.ndarray) -> np.ndarray:
    """Keep masks (N, H, W) of bands starting at columns ``starts`` (N,) (training)."""
    return band_keep(size, band)[np.asarray(starts) % int(size[1])]


def random_crop_keep(size: Sequence[int], crop: int, tops: np.ndarray, lefts: np.ndarray) -> np.ndarray:
    """Keep masks (N, H, W) of crops with top-left corners (tops, lefts) (training)."""
    height, width = int(size[0]), int(size[1])
    rows = np.arange(height)[None, :] - np.asarray(tops)[:, None]
    cols = np.arange(width)[None, :] - np.asarray(lefts)[:, None]
    inside_r = (rows >= 0) & (rows < crop)
    inside_c = (cols >= 0) & (cols < crop)
    return inside_r[:, :, None] & inside_c[:, None, :]


def encode(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The (x, 1 - x) encoding: x (..., C', H, W) in [0, 1], keep (..., H, W)
    broadcasting against x's leading axes -> float32 (..., 2C', H, W).

    Channels 0 .. C'-1 hold x, channels C' .. 2C'-1 hold 1 - x, both 0 where
    the pixel is ablated.
    """
    x = np.asarray(x, dtype=np.float32)
    mask = np.asarray(keep, dtype=bool)[..., None, :, :]
    lead = np.broadcast_shapes(x.shape[:-3], mask.shape[:-3])
    channels = x.shape[-3]
    out = np.zeros(lead + (2 * channels,) + x.shape[-2:], dtype=np.float32)
    np.copyto(out[..., :channels, :, :], x, where=mask)
    np.copyto(out[..., channels:, :, :], np.float32(1.0) - x, where=mask)
    return out


def unnormalize(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The record's normalisation undone: (B, C', H, W) -> x in [0, 1] (float32)."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return np.asarray(batch, dtype=np.float32) * s + m


def frame_views(batch: np.ndarray, keep: np.ndarray, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """Every view of every frame: normalised (B, C', H, W) and keep (V, H, W)
    -> the classifier's batch (B * V, 2C', H, W), frame-major."""
    x = unnormalize(batch, mean, std)
    views = encode(x[:, None], keep[None])
    return views.reshape((-1,) + views.shape[2:])

