"""The threat model in camera pixels: patch -> model-pixel footprint -> window.

Users state the patch in the pixels of the camera frame; the model sees a
cropped, resized copy (:class:`~patchguard.runtime.preprocess.ResizePlan`).
Resizing is separable, so each axis is handled on its own: model pixel x
reads the frame pixels ``lo[x] .. hi[x]`` of the crop (its *support*). A run
of frame pixels ``[p0, p0 + p)`` changes exactly the model pixels whose
support meets it; the *footprint* of a p-pixel patch is the largest number of
such model pixels over every position p0. The mask window is then
``cells_touched(footprint, r, s)`` per axis (README.md, "The math, in one screen"): a p-pixel
camera patch reaches ``p / scale`` model pixels plus the kernel's reach, and
non-square scaling gives rectangular windows.

Supports, for OpenCV's kernels (``k = src / dst`` frame pixels per model pixel):

- ``area`` (no axis enlarged, see :func:`~patchguard.runtime.preprocess.resize_plan`):
  x averages the frame interval ``[x k, (x+1) k)``,
  so ``lo = floor(x k)``, ``hi = ceil((x+1) k) - 1`` (exact rationals; OpenCV
  drops slivers under 1e-3 px, so its support is never wider).
- ``linear``: x samples ``e = (x + 0.5) k - 0.5`` and blends pixels
  ``floor(e)`` and ``floor(e) + 1``, clamped to the image. OpenCV rounds e to
  float32 first, so a non-integer e within 1e-3 of an integer is widened to
  both neighbours.
- ``none`` (sizes match): x reads x.

The tests change random patches in random frames and check that every
changed model pixel lies inside the footprint computed here.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Generic, Optional, TypeVar

import numpy as np

from .errors import PatchGuardError
from .geometry import Pair, cells_touched
from .metadata import ModelRecord
from .preprocess import ResizePlan, resize_plan

T = TypeVar("T")
# Box in frame pixels: (left, top, right, bottom), right/bottom exclusive.
Box = tuple[int, int, int, int]
_FLOAT32_SLACK = 1e-3


@lru_cache(maxsize=64)
def support(src: int, dst: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) int64 arrays (dst,): the frame pixels each model pixel reads."""
    x = np.arange(dst, dtype=np.int64)
    if interpolation == "none" or (src == dst and interpolation == "area"):
        lo, hi = x.copy(), x.copy()
    elif interpolation == "area":
        lo = (x * src) // dst
        hi = -(-(x + 1) * src // dst) - 1
    elif interpolation == "linear":
        num, den = (2 * x + 1) * src - dst, 2 * dst
        exact = num % den == 0
        e = num / den
        lo = np.where(exact, num // den, np.floor(e - _FLOAT32_SLACK)).astype(np.int64)
        hi = np.where(exact, num // den, np.floor(e + _FLOAT32_SLACK)).astype(np.int64) + 1
    else:
        raise PatchGuardError(f"no footprint known for interpolation {interpolation!r}")
    lo, hi = np.clip(lo, 0, src - 1), np.clip(hi, 0, src - 1)
    lo.flags.writeable = False
    hi.flags.writeable = False
    return lo, hi


@lru_cache(maxsize=64)
def footprints(src: int, dst: int, interpolation: str, longest: int) -> np.ndarray:
    """Footprint in model pixels of every patch length 1..longest: int64 (longest,).

    ``result[p - 1]`` is the most model pixels a run of p frame pixels can
    change along this axis, over every position inside the crop (a patch
    reaching outside the crop changes less).
    """
    lo, hi = support(src, dst, interpolation)
    starts = np.arange(src)
    # Model pixels touched by a run [p0, e]: from the first x with hi[x] >= p0
    # to the last x with lo[x] <= e (both arrays are non-decreasing).
    first = np.searchsorted(hi, starts, side="left")
    last = np.searchsorted(lo, starts, side="right") - 1
    out = np.empty(longest, dtype=np.int64)
    for p in range(1, longest + 1):
        if p >= src:
            out[p - 1:] = dst
            break
        out[p - 1] = int(np.max(last[p - 1:] - first[: src - p + 1])) + 1
    return out


def footprint(plan: ResizePlan, patch_px: Pair) -> Pair:
    """Model-pixel footprint (rows, columns) of a (height, width) frame patch."""
    (_, _, ch, cw), (h, w) = plan.crop, plan.input_size
    ph, pw = patch_px
    return (
        int(footprints(ch, h, plan.interpolation, ph)[-1]),
        int(footprints(cw, w, plan.interpolation, pw)[-1]),
    )


def patch_window(plan: ResizePlan, patch_px: Pair, record: ModelRecord) -> Pair:
    """Window (a, b) of cells covering any (height, width) frame patch."""
    fh, fw = footprint(plan, patch_px)
    r, s = record.receptive_field, record.stride
    return cells_touched(fh, r, s), cells_touched(fw, r, s)


@dataclass(frozen=True)
class CameraThreat:
    """The threat model for one frame size, ready for certification.

    ``patch_px`` is the side of the square camera patch the mask is built for;
    ``window`` (a, b) is that mask. ``sizes`` are the candidate sides for the
    certified patch size, increasing, each the largest side with its patch
    window ``patch_windows[i]`` (also increasing, the last equal to ``window``).
    """

    plan: ResizePlan
    patch_px: int
    window: Pair
    sizes: tuple[int, ...]
    patch_windows: tuple[Pair, ...]


def camera_threat(plan: ResizePlan, record: ModelRecord, patch_px: int) -> CameraThreat:
    """Mask window and candidate patch sizes for square ``patch_px`` camera patches."""
    if patch_px < 1:
        raise PatchGuardError(f"patch size must be at least 1 pixel, got {patch_px}")
    # Before the per-side footprints (arrays of patch_px entries): a patch larger than the
    # frame covers all of it, and a certificate against it means nothing.
    fh, fw = plan.frame_size
    if patch_px > max(fh, fw):
        raise PatchGuardError(f"a {patch_px} px patch is larger than the {fw}x{fh} frame; "
                              "choose a smaller patch")
    (_, _, ch, cw), (h, w) = plan.crop, plan.input_size
    r, s = record.receptive_field, record.stride
    rows = footprints(ch, h, plan.interpolation, patch_px)
    cols = footprints(cw, w, plan.interpolation, patch_px)
    windows = [(cells_touched(int(a), r, s), cells_touched(int(b), r, s)) for a, b in zip(rows, cols)]
    sizes: list[int] = []
    patch_windows: list[Pair] = []
    for side, window in enumerate(windows, start=1):
        if patch_windows and patch_windows[-1] == window:
            sizes[-1] = side  # keep the largest side that shares this window
        else:
            sizes.append(side)
            patch_windows.append(window)
    return CameraThreat(plan, patch_px, windows[-1], tuple(sizes), tuple(patch_windows))


def check_patch_options(patch_size: Optional[int], patch_frac: Optional[float]) -> None:
    """At most one of a patch side >= 1 pixel and an area fraction in (0, 1]."""
    if patch_size is not None and patch_frac is not None:
        raise PatchGuardError("give either a patch size in pixels or a fraction of the frame, not both")
    if patch_size is not None and (isinstance(patch_size, bool)
                                   or not isinstance(patch_size, (int, np.integer)) or patch_size < 1):
        raise PatchGuardError(f"patch size must be a whole number of pixels, at least 1, got {patch_size!r}")
    if patch_frac is not None and (isinstance(patch_frac, bool)
                                   or not isinstance(patch_frac, (int, float, np.integer, np.floating))
                                   or not 0.0 < float(patch_frac) <= 1.0):
        raise PatchGuardError(f"patch fraction must be a number in (0, 1], got {patch_frac!r}")


def patch_side(plan: ResizePlan, record: ModelRecord, patch_size: Optional[int] = None,
               patch_frac: Optional[float] = None) -> int:
    """Side in camera pixels of the square patch the user's options describe.

    ``patch_size``: the side itself. ``patch_frac``: a square covering that
    fraction of the whole frame's area (rounded up). Neither: the model's
    ``default_patch_px`` (in model pixels) mapped back to camera pixels, i.e.
    the square with the same share of the area the model sees, rounded up:
    ``ceil(default_patch_px * sqrt(scale_rows * scale_cols))``.
    """
    check_patch_options(patch_size, patch_frac)
    if patch_size is not None:
        return int(patch_size)
    if patch_frac is not None:
        h, w = plan.frame_size
        return max(1, math.ceil(math.sqrt(float(patch_frac) * h * w) - 1e-9))
    if record.default_patch_px < 1:
        raise PatchGuardError(
            f"the model ({record.arch}) names no default patch size; pass a patch size or fraction"
        )
    kh, kw = plan.scale
    return max(1, math.ceil(record.default_patch_px * math.sqrt(kh * kw) - 1e-9))


class ThreatCache(Generic[T]):
    """Threat models per frame size (h, w), built once each by ``build(size, plan, side)``
    (the resize plan and the patch side the user's options give for that size).
    Thread-safe; at most ``limit`` sizes, so a folder of many frame sizes cannot grow it forever."""

    def __init__(self, record: ModelRecord, patch_size: Optional[int], patch_frac: Optional[float],
                 build: Callable[[Pair, ResizePlan, int], T], limit: int = 64) -> None:
        self.record, self.patch_size, self.patch_frac = record, patch_size, patch_frac
        self._build, self._limit = build, limit
        self._lock = threading.Lock()
        self._items: dict[Pair, T] = {}

    def get(self, frame_size: Sequence[int]) -> T:
        key = (int(frame_size[0]), int(frame_size[1]))
        with self._lock:
            found = self._items.get(key)
            if found is None:
                plan = resize_plan(key, self.record)
                found = self._build(key, plan, patch_side(plan, self.record, self.patch_size, self.patch_frac))
                if len(self._items) >= self._limit:
                    self._items.clear()
                self._items[key] = found
            return found


def cells_to_box(plan: ResizePlan, record: ModelRecord, top: int, left: int, window: Pair) -> Box:
    """Frame-pixel box (left, top, right, bottom) read by a window of cells.

    The window's cells at (top, left) .. (top + a - 1, left + b - 1) see model
    pixels ``[i s, (i + a - 1) s + r)`` per axis; the box is the frame pixels
    those model pixels read (their support), offset by the crop.
    """
    (ctop, cleft, ch, cw), (h, w) = plan.crop, plan.input_size
    r, s = record.receptive_field, record.stride
    a, b = window
    y0, y1 = top * s, min(h - 1, (top + a - 1) * s + r - 1)
    x0, x1 = left * s, min(w - 1, (left + b - 1) * s + r - 1)
    lo_h, hi_h = support(ch, h, plan.interpolation)
    lo_w, hi_w = support(cw, w, plan.interpolation)
    return (
        cleft + int(lo_w[x0]), ctop + int(lo_h[y0]),
        cleft + int(hi_w[x1]) + 1, ctop + int(hi_h[y1]) + 1,
    )
