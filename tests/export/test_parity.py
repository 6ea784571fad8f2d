"""Export parity's mask window: the record's own patch, refused (not shrunk) when it does not fit."""
from __future__ import annotations

import pytest

from patchguard.export.parity import parity_window
from patchguard.models import record_for
from patchguard.runtime.errors import PatchGuardError


def test_parity_window_is_the_default_patch_window() -> None:
    record = record_for("smallbagnet")  # 28 px input, r=5, s=1: a 24x24 map
    assert parity_window(record.replace(default_patch_px=5)) == 9
    assert record.window_for(5) == (9, 9) and record.window_for((3, 5)) == (7, 9)


def test_a_default_patch_larger_than_the_map_is_refused() -> None:
    record = record_for("smallbagnet").replace(default_patch_px=25)
    with pytest.raises(PatchGuardError, match=r"a 25 px patch \(the record's default patch\) \(r=5, s=1\) "
                                              r"needs a 29x29 window, larger than the 24x24 map"):
        parity_window(record)
