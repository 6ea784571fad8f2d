"""Patch -> window geometry: the one place that maps pixels to feature cells.

A BagNet cell sees an r x r pixel receptive field and cells are s pixels
apart, so a p-pixel patch touches at most ``ceil((p + r - 1) / s)`` cells
along an axis (PatchGuard, Lemma 1). Rectangular patches give rectangular
windows, one axis at a time.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from .errors import PatchGuardError

Pair = tuple[int, int]
IntOrPair = Union[int, tuple[int, int], list[int]]


def count(value: object, name: str) -> int:
    """A positive whole number of cells or pixels: a Python or numpy integer
    (never a bool, a float or a string), at least 1."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < 1):
        raise PatchGuardError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_pair(value: IntOrPair, name: str = "window") -> Pair:
    """``6`` -> ``(6, 6)``; ``(3, 5)`` stays; anything else is one error.

    Only Python and numpy integers of at least 1 are accepted, alone or as a
    pair: a float is refused rather than truncated, a bool rather than read
    as 0 or 1.
    """
    items = list(value) if isinstance(value, (tuple, list, np.ndarray)) else [value, value]
    try:
        if len(items) != 2:
            raise PatchGuardError("not a pair")
        return count(items[0], name), count(items[1], name)
    except PatchGuardError:
        raise PatchGuardError(
            f"{name} must be a positive integer or a pair (a, b) of them, got {value!r}"
        ) from None


def parse_pair(text: str, name: str = "size") -> Pair:
    """Parse ``"6"`` or ``"6x4"`` (rows x columns) from the command line."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise PatchGuardError(f"{name} must look like 6 or 6x4, got {text!r}") from None
    if len(numbers) == 1:
        return as_pair(numbers[0], name)
    if len(numbers) == 2:
        return as_pair((numbers[0], numbers[1]), name)
    raise PatchGuardError(f"{name} must look like 6 or 6x4, got {text!r}")


def parse_size_flags(hw_text: Optional[str], wh_text: Optional[str], hw_flag: str, wh_flag: str) -> Optional[Pair]:
    """(rows, columns) from a size flag written HxW, the convention of every size flag
    here, or from its older spelling ``wh_flag`` written WxH (width first); None if
    neither was given, one error if both were."""
    if hw_text is not None and wh_text is not None:
        raise PatchGuardError(f"{hw_flag} (HxW) and {wh_flag} (its older spelling, WxH) give the same size; "
                              "pass one")
    if wh_text is not None:
        width, height = parse_pair(wh_text, wh_flag)
        return height, width
    return parse_pair(hw_text, hw_flag) if hw_text is not None else None


def cells_touched(extent_px: int, receptive_field: int, stride: int) -> int:
    """Most cells along one axis that a run of ``extent_px`` pixels can touch."""
    extent_px = count(extent_px, "patch size")
    receptive_field = count(receptive_field, "receptive field")
    stride = count(stride, "stride")
    return -(-(extent_px + receptive_field - 1) // stride)


def window_size(patch_px: int, receptive_field: int, stride: int) -> int:
    """Side of the square window of cells that covers any p x p patch.

    >>> window_size(32, 17, 8)
    6
    """
    return cells_touched(patch_px, receptive_field, stride)


def window_shape(patch_px: IntOrPair, receptive_field: int, stride: int) -> Pair:
    """Window (a, b) of cells that covers any patch of (height, width) pixels."""
    ph, pw = as_pair(patch_px, "patch size")
    return cells_touched(ph, receptive_field, stride), cells_touched(pw, receptive_field, stride)


def size_text(size: IntOrPair) -> str:
    """"32" for a square patch, "24x32" for a rectangular one."""
    pair = as_pair(size, "patch size")
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def check_fits(window: IntOrPair, map_hw: tuple[int, ...], what: str = "") -> Pair:
    """The one "window fits the map" check: (a, b) inside the (H, W) map, else one error.

    ``what`` names what needs the window (``"a 32 px patch (r=17, s=8)"``).
    """
    a, b = as_pair(window, "window")
    height, width = int(map_hw[0]), int(map_hw[1])
    if a > height or b > width:
        needs = f"{what} needs a {a}x{b} window," if what else f"window {a}x{b} is"
        raise PatchGuardError(f"{needs} larger than the {height}x{width} map of local logits")
    return a, b


def map_size(input_px: int, receptive_field: int, stride: int) -> int:
    """Cells along one axis of the local-logit map: ``floor((input - r) / s) + 1``."""
    if input_px < receptive_field:
        raise PatchGuardError(
            f"input of {input_px} px is smaller than the receptive field of {receptive_field} px"
        )
    return (input_px - receptive_field) // stride + 1


@dataclass(frozen=True)
class MaskAxis:
    """PatchCleanser's masks along one axis of ``size`` positions (pixels or
    cells) against a ``patch`` run: ``k`` masks asked, their ``stride`` s, mask
    ``side`` m and ``starts`` (:func:`mask_axis`)."""

    size: int
    patch: int
    k: int
    stride: int
    side: int
    starts: tuple[int, ...]


def mask_axis(size: int, patch: int, per_axis: int) -> MaskAxis:
    """PatchCleanser's mask grid along one axis, the one place of its arithmetic.

    For ``per_axis`` = k masks over ``size`` = N positions (pixels or cells)
    against a ``patch`` of p: stride ``s = ceil((N - p + 1) / k)``, side
    ``m = min(p + s - 1, N)``, starts ``0, s, 2s, ...`` up to ``N - m`` plus
    ``N - m`` itself if the stride skipped it. Every run of p positions then
    lies inside one mask (consecutive starts are at most s apart and
    ``m - p + 1 = s``). k >= N - p + 1 gives stride 1 (every position, m = p).
    """
    size, patch = int(size), int(patch)
    if patch < 1 or size < patch:
        raise PatchGuardError(f"a patch of {patch} does not fit in {size} positions")
    try:
        k = operator.index(per_axis)
    except TypeError:
        k = 0
    if k < 1 or isinstance(per_axis, bool):
        raise PatchGuardError(f"masks per axis must be a positive integer, got {per_axis!r}")
    stride = -(-(size - patch + 1) // k)
    side = min(patch + stride - 1, size)
    return MaskAxis(size, patch, k, stride, side, tuple(flush_starts(size, side, stride)))


@dataclass(frozen=True)
class MaskGrid:
    """PatchCleanser's rectangular masks over an (H, W) extent: the product of
    the two axes' masks, row-major (mask i is row ``i // len(cols.starts)``,
    column ``i % len(cols.starts)``). The unit is the axes': feature cells for
    feature-space double masking (:mod:`.double_masking`), model pixels for
    PatchCleanser (:class:`.cleanser.PixelMaskSet` adds the pixel masks)."""

    rows: MaskAxis
    cols: MaskAxis

    @property
    def count(self) -> int:
        """|M|: masks in the grid."""
        return len(self.rows.starts) * len(self.cols.starts)

    @property
    def pair_count(self) -> int:
        """Two-mask views to certify (i <= j): |M| (|M| + 1) / 2."""
        return self.count * (self.count + 1) // 2

    @property
    def side(self) -> Pair:
        """(m_rows, m_cols): every mask's side."""
        return self.rows.side, self.cols.side

    @property
    def stride(self) -> Pair:
        return self.rows.stride, self.cols.stride

    def box(self, i: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of mask i, bottom/right exclusive."""
        top, left = self.rows.starts[i // len(self.cols.starts)], self.cols.starts[i % len(self.cols.starts)]
        return top, left, top + self.rows.side, left + self.cols.side

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """:meth:`box` of every mask, in order."""
        return [self.box(i) for i in range(self.count)]

    def covering(self, top: int, left: int) -> int:
        """Index of a mask containing the patch whose corner is (top, left); -1 if none."""
        ph, pw = self.rows.patch, self.cols.patch
        for index, (t, lft, b, r) in enumerate(self.boxes):
            if t <= top and top + ph <= b and lft <= left and left + pw <= r:
                return index
        return -1


def mask_grid(shape: tuple[int, ...], patch: IntOrPair, per_axis: IntOrPair) -> MaskGrid:
    """The mask grid of an (H, W) extent against a (p_rows, p_cols) patch with
    k masks per axis (each an int, or a pair)."""
    pa, pb = as_pair(patch, "patch")
    ka, kb = as_pair(per_axis, "masks per axis")
    return MaskGrid(mask_axis(shape[0], pa, ka), mask_axis(shape[1], pb, kb))


def flush_starts(extent: int, length: int, stride: int) -> list[int]:
    """Starts of runs of ``length`` every ``stride`` positions over ``extent``, the
    last run flush with the end: ``range(0, extent - length + 1, stride)`` plus
    ``extent - length`` when the stride skipped it. Needs ``1 <= length <= extent``."""
    starts = list(range(0, extent - length + 1, stride))
    if starts[-1] != extent - length:
        starts.append(extent - length)
    return starts


def first_cell(pixel: Any, receptive_field: int, stride: int) -> Any:
    """First cell along an axis whose receptive field reaches ``pixel``:
    ``ceil((pixel - r + 1) / s)``, negative near the start (callers clamp).

    Cell i sees pixels ``i*s .. i*s + r - 1``. ``pixel`` may be an int or an
    integer numpy array / torch tensor (floor division rounds down on all three).
    """
    return -((receptive_field - 1 - pixel) // stride)


def touched_cells(start: int, stop: int, receptive_field: int, stride: int, cells: int) -> slice:
    """Cells along one axis of a ``cells``-long map whose receptive field meets
    pixels ``start .. stop - 1``."""
    first = max(0, first_cell(start, receptive_field, stride))
    last = min(cells - 1, (stop - 1) // stride)
    return slice(first, last + 1)
