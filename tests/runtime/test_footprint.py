"""The camera-pixel threat model: every model pixel a patch changes lies in its footprint."""
from __future__ import annotations

import math

import numpy as np
import pytest

from patchguard.runtime.footprint import (
    camera_threat,
    cells_to_box,
    footprint,
    footprints,
    patch_side,
    patch_window,
    support,
)
from patchguard.runtime.geometry import cells_touched
from patchguard.runtime.metadata import ModelRecord
from patchguard.runtime.preprocess import resize_plan, to_model_image

cv2 = pytest.importorskip("cv2")

GRAY28 = ModelRecord(arch="smallbagnet", num_classes=10, input_size=(28, 28), receptive_field=5,
                     stride=1, mean=(0.5,), std=(0.5,), in_channels=1, default_patch_px=5)
CROP224 = ModelRecord(arch="bagnet17", num_classes=10, input_size=(224, 224), receptive_field=17,
                      stride=8, mean=(0.5,) * 3, std=(0.5,) * 3, crop_fraction=224 / 256,
                      default_patch_px=32)
WIDE = ModelRecord(arch="wide", num_classes=3, input_size=(24, 40), receptive_field=7, stride=2,
                   mean=(0.5,) * 3, std=(0.5,) * 3)
RECORDS = [GRAY28, CROP224, WIDE]


def _changed_extent(record: ModelRecord, frame: np.ndarray,
                    box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of model pixels that change when the patch's pixels are redrawn."""
    top, left, ph, pw = box
    before = to_model_image(frame, record).astype(np.int16)
    attacked = frame.copy()
    # Inverting moves every pixel of a random frame by a lot (on average 128
    # levels), so any kernel weight on the patch shows in the output.
    region = attacked[top : top + ph, left : left + pw]
    attacked[top : top + ph, left : left + pw] = 255 - region
    after = to_model_image(attacked, record).astype(np.int16)
    diff = np.abs(after - before)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    rows = np.flatnonzero(diff.max(axis=1) > 0)
    cols = np.flatnonzero(diff.max(axis=0) > 0)
    return rows, cols


def _check_patch(record: ModelRecord, h: int, w: int, p: int, rng: np.random.Generator) -> list[int]:
    """Attack one random p x p patch of a random h x w frame; return the footprint's slack."""
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    plan = resize_plan((h, w), record)
    top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
    rows, cols = _changed_extent(record, frame, (top, left, p, p))
    fh, fw = footprint(plan, (p, p))
    if rows.size:
        assert rows[-1] - rows[0] + 1 <= fh, (h, w, p, top, plan)
    if cols.size:
        assert cols[-1] - cols[0] + 1 <= fw, (h, w, p, left, plan)
    # The changed pixels must also sit where the support says for this position.
    ctop, cleft, ch, cw = plan.crop
    slack = []
    for changed, start, (lo, hi), extent in (
        (rows, top - ctop, support(ch, plan.input_size[0], plan.interpolation), fh),
        (cols, left - cleft, support(cw, plan.input_size[1], plan.interpolation), fw),
    ):
        predicted = np.flatnonzero((lo <= start + p - 1) & (hi >= start))
        assert set(changed.tolist()) <= set(predicted.tolist()), (h, w, p, plan)
        assert predicted.size <= extent
        if changed.size:
            slack.append(int(predicted.size - changed.size))
    return slack


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.arch)
def test_every_changed_model_pixel_lies_in_the_footprint(record: ModelRecord) -> None:
    rng = np.random.default_rng(1234 + record.input_size[0])
    slack: list[int] = []
    for _ in range(120):
        # Frame sizes from well below to well above the model size, rarely square.
        h = int(rng.integers(max(4, record.input_size[0] // 3), record.input_size[0] * 12))
        w = int(rng.integers(max(4, record.input_size[1] // 3), record.input_size[1] * 12))
        p = int(rng.integers(1, max(2, min(h, w) // 3)))
        slack += _check_patch(record, h, w, p, rng)
    # Not grossly loose: the footprint exceeds what actually changed by at most
    # the zero-weight taps at either end, and rarely at all.
    assert max(slack) <= 2
    assert np.mean(slack) < 0.5


@pytest.mark.parametrize("h,w", [(112, 112), (56, 84), (280, 280), (480, 640), (720, 1280),
                                 (27, 29), (14, 14), (28, 200), (300, 20)])
def test_footprint_at_camera_and_exact_ratio_sizes(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 10_000 + w)
    for record in RECORDS:
        for _ in range(12):
            _check_patch(record, h, w, int(rng.integers(1, max(2, min(h, w) // 2))), rng)


@pytest.mark.parametrize("src,dst,interp", [(640, 28, "area"), (480, 28, "area"), (420, 224, "area"),
                                            (20, 28, "linear"), (100, 224, "linear"),
                                            (28, 28, "none"), (56, 28, "area")])
def test_footprint_is_close_to_the_scaled_patch(src: int, dst: int, interp: str) -> None:
    k = src / dst
    sizes = footprints(src, dst, interp, min(src, 200))
    for p, f in enumerate(sizes, start=1):
        ideal = p / k
        assert f >= min(dst, math.floor(ideal)), (p, f)
        # Area: the patch plus a partly covered model pixel at each end. Linear: a
        # frame pixel reaches 2 / k model pixels (both bilinear taps), so p + 1.
        reach = math.ceil(ideal) + 1 if interp != "linear" else math.ceil((p + 1) / k) + 1
        assert f <= min(dst, reach), (p, f)
    assert np.all(np.diff(sizes) >= 0)


def test_camera_threat_lists_increasing_windows_ending_at_the_mask() -> None:
    plan = resize_plan((480, 640), GRAY28)
    threat = camera_threat(plan, GRAY28, 120)
    assert threat.window == patch_window(plan, (120, 120), GRAY28)
    assert threat.patch_windows[-1] == threat.window and threat.sizes[-1] == 120
    assert list(threat.sizes) == sorted(set(threat.sizes))
    for small, big in zip(threat.patch_windows, threat.patch_windows[1:]):
        assert small[0] <= big[0] and small[1] <= big[1] and small != big
    for side, window in zip(threat.sizes, threat.patch_windows):
        # Each listed size is the largest with its window.
        assert patch_window(plan, (side, side), GRAY28) == window
        if side < 120:
            assert patch_window(plan, (side + 1, side + 1), GRAY28) != window
    # 480 rows and 640 columns scale differently: a rectangular mask.
    assert threat.window[0] != threat.window[1]


def test_patch_side_options() -> None:
    plan = resize_plan((112, 112), GRAY28)
    assert patch_side(plan, GRAY28) == 20  # 5 model px at 4 camera px per model px
    assert patch_side(plan, GRAY28, patch_size=9) == 9
    assert patch_side(plan, GRAY28, patch_frac=0.02) == math.ceil(math.sqrt(0.02 * 112 * 112))
    same = resize_plan((28, 28), GRAY28)
    assert patch_side(same, GRAY28) == 5
    # A 5 px model patch at scale 1 needs cells_touched(5, 5, 1) = 9 cells.
    assert camera_threat(same, GRAY28, 5).window == (cells_touched(5, 5, 1),) * 2


def test_masked_box_covers_every_frame_pixel_the_cells_read() -> None:
    rng = np.random.default_rng(7)
    for record in RECORDS:
        for _ in range(10):
            h, w = (int(v) for v in rng.integers(20, 700, size=2))
            plan = resize_plan((h, w), record)
            mh, mw = record.map_size
            a, b = int(rng.integers(1, mh + 1)), int(rng.integers(1, mw + 1))
            top, left = int(rng.integers(0, mh - a + 1)), int(rng.integers(0, mw - b + 1))
            x0, y0, x1, y1 = cells_to_box(plan, record, top, left, (a, b))
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            # A frame pixel outside the box never reaches the cells' receptive fields.
            frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            outside = frame.copy()
            keep = outside[y0:y1, x0:x1].copy()
            outside[:] = 255 - outside
            outside[y0:y1, x0:x1] = keep
            r, s = record.receptive_field, record.stride
            rows = slice(top * s, (top + a - 1) * s + r)
            cols = slice(left * s, (left + b - 1) * s + r)
            before = to_model_image(frame, record)[rows, cols]
            after = to_model_image(outside, record)[rows, cols]
            assert np.array_equal(before, after)
