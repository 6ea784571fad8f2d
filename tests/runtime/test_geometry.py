"""Patch -> window geometry (PatchGuard Lemma 1) and PatchCleanser's mask grid, torch-free."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from _feature_fixtures import naive_mask_starts

from patchguard.runtime import PatchGuardError, map_size, window_shape, window_size
from patchguard.runtime.geometry import (
    as_pair,
    first_cell,
    flush_starts,
    mask_axis,
    mask_grid,
    parse_pair,
    parse_size_flags,
    touched_cells,
)


@pytest.mark.parametrize(
    "patch_px, r, s, expected",
    [(32, 17, 8, 6), (32, 9, 8, 5), (32, 33, 8, 8), (42, 17, 8, 8), (5, 7, 1, 11)],
)
def test_window_size_examples(patch_px, r, s, expected):
    assert window_size(patch_px, r, s) == expected


@pytest.mark.parametrize("p", range(1, 40))
@pytest.mark.parametrize("r, s", [(9, 8), (17, 8), (33, 8), (5, 1), (3, 2), (1, 1)])
def test_window_size_is_most_cells_any_patch_touches(p, r, s):
    # Brute force over every patch offset: cell k sees pixels [k s, k s + r).
    most = 0
    for start in range(0, 4 * s + 1):
        touched = [k for k in range(0, (start + p) // s + 2)
                   if k * s < start + p and k * s + r > start]
        most = max(most, len(touched))
    assert window_size(p, r, s) == most == math.ceil((p + r - 1) / s)


def test_window_shape_is_per_axis():
    assert window_shape(32, 17, 8) == (6, 6)
    assert window_shape((32, 5), 17, 8) == (6, 3)  # ceil(21 / 8) = 3 columns
    assert window_shape((42, 32), 17, 8) == (8, 6)
    assert window_shape([5, 2], 7, 1) == (11, 8)


def test_map_size():
    assert [map_size(224, r, 8) for r in (9, 17, 33)] == [27, 26, 24]
    assert [map_size(192, r, 8) for r in (9, 17, 33)] == [23, 22, 20]
    assert map_size(28, 5, 1) == 24
    with pytest.raises(PatchGuardError, match="smaller than the receptive field"):
        map_size(8, 9, 8)


@pytest.mark.parametrize("bad", [(0, 17, 8), (32, 0, 8), (32, 17, 0), (-3, 17, 8)])
def test_window_size_rejects_non_positive(bad):
    with pytest.raises(PatchGuardError):
        window_size(*bad)


def test_pairs():
    assert as_pair(6) == (6, 6)
    assert as_pair((3, 5)) == (3, 5)
    assert parse_pair("6x4") == (6, 4)
    assert parse_pair("7") == (7, 7)
    for bad in ((0, 3), "abc", (1, 2, 3), True):
        with pytest.raises(PatchGuardError):
            as_pair(bad)
    with pytest.raises(PatchGuardError, match="6x4"):
        parse_pair("6x4x2")


def test_runtime_import_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, importlib, pkgutil\n"
        "import patchguard.runtime as rt\n"
        "assert 'torch' not in sys.modules, 'import patchguard.runtime imported torch'\n"
        "for info in pkgutil.walk_packages(rt.__path__, 'patchguard.runtime.'):\n"
        "    importlib.import_module(info.name)\n"
        "    assert 'torch' not in sys.modules, info.name + ' imported torch'\n"
        "import numpy as np\n"
        "rt.certify(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), 3)\n"
        "assert 'torch' not in sys.modules, 'certify imported torch'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("receptive_field", [1, 5, 9])
@pytest.mark.parametrize("stride", [1, 2, 3, 8])
def test_touched_cells_matches_the_definition(receptive_field, stride):
    pixels = 40
    cells = (pixels - receptive_field) // stride + 1
    for start in range(pixels):
        for stop in range(start + 1, min(start + 4, pixels) + 1):
            want = [i for i in range(cells)
                    if i * stride <= stop - 1 and i * stride + receptive_field - 1 >= start]
            got = list(range(cells))[touched_cells(start, stop, receptive_field, stride, cells)]
            assert got == want


def test_flush_starts_end_flush_with_the_edge():
    assert flush_starts(28, 5, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 23]
    assert flush_starts(28, 5, 1) == list(range(24))
    assert flush_starts(5, 5, 4) == [0]


def test_first_cell_is_one_formula_for_ints_and_arrays():
    pixels = np.arange(-3, 40)
    for r, s in ((1, 1), (5, 1), (9, 8), (17, 8), (5, 2)):
        got = first_cell(pixels, r, s).tolist()
        assert got == [first_cell(int(p), r, s) for p in pixels]
        assert got == [min(i for i in range(-10, 60) if i * s + r - 1 >= p) for p in pixels.tolist()]


def test_size_flags_are_rows_by_columns_and_the_older_spelling_is_width_first():
    # One convention (HxW) for every size flag; --frame / --camera-size keep their WxH meaning.
    assert parse_size_flags("720x1280", None, "--frame-size", "--frame") == (720, 1280)
    assert parse_size_flags(None, "1280x720", "--frame-size", "--frame") == (720, 1280)
    assert parse_size_flags(None, None, "--frame-size", "--frame") is None
    with pytest.raises(PatchGuardError, match="--frame-size .* and --frame .*pass one"):
        parse_size_flags("720x1280", "1280x720", "--frame-size", "--frame")
    for bad in ("0x720", "axb", "1x2x3"):
        with pytest.raises(PatchGuardError, match="--camera-size"):
            parse_size_flags(None, bad, "--camera-frame-size", "--camera-size")


def test_mask_grid_covers_every_patch_and_matches_patchcleanser() -> None:
    for size, patch, k in itertools.product(range(1, 14), range(1, 14), range(1, 16)):
        if patch > size:
            continue
        axis = mask_axis(size, patch, k)
        starts, side = axis.starts, axis.side
        assert (list(starts), side) == naive_mask_starts(size, patch, k)
        assert side >= patch and starts[0] == 0 and starts[-1] == size - side
        for q in range(size - patch + 1):  # every patch run lies inside some mask
            assert any(s <= q and q + patch <= s + side for s in starts), (size, patch, k, q)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_mask_grid_rejects_bad_counts(bad: object) -> None:
    with pytest.raises(PatchGuardError, match="masks per axis"):
        mask_axis(10, 3, bad)  # type: ignore[arg-type]


def test_last_mask_is_flush_with_the_border():
    axis = mask_axis(30, 5, 4)  # s = ceil(26 / 4) = 7, m = 11: starts 0, 7, 14 then 19
    assert (axis.stride, axis.side, axis.starts) == (7, 11, (0, 7, 14, 19))
    assert mask_axis(10, 10, 3).starts == (0,) and mask_axis(10, 10, 3).side == 10
    # More masks than positions: stride 1, masks as wide as the patch.
    many = mask_axis(8, 3, 20)
    assert (many.stride, many.side, many.starts) == (1, 3, tuple(range(6)))


@pytest.mark.parametrize("size, patch, k", [(28, 0, 6), (28, 29, 6), (28, 5, 0)])
def test_bad_mask_geometry_is_an_error(size, patch, k):
    with pytest.raises(PatchGuardError):
        mask_axis(size, patch, k)


def test_mask_grid_lists_masks_row_major() -> None:
    masks = mask_grid((10, 7), (3, 2), (2, 3))
    assert masks.rows.starts == (0, 4) and masks.side == (6, 3) and masks.cols.starts == (0, 2, 4)
    assert masks.count == 6 and masks.box(4) == (4, 2, 10, 5)
    assert masks.boxes == [masks.box(i) for i in range(6)] and masks.covering(4, 3) == 4
