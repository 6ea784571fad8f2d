"""Colour order and sample types: stated, never guessed (--color, color=, --value-range)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _pipeline_fixtures import fashion_frames

from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import ModelRecord
from patchguard.runtime.pipeline import Pipeline
from patchguard.runtime.preprocess import to_bgr8, to_model_image, to_uint8

cv2 = pytest.importorskip("cv2")
RGB_MODEL = ModelRecord(arch="t", num_classes=2, input_size=(24, 24), receptive_field=5, stride=1,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), in_channels=3)
GRAY_MODEL = ModelRecord(arch="t", num_classes=2, input_size=(24, 24), receptive_field=5, stride=1,
                         mean=(0.5,), std=(0.25,), in_channels=1)


def _colourful(h: int = 50, w: int = 70, seed: int = 0) -> np.ndarray:
    """A BGR frame whose three channels differ everywhere (a swap always shows)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    frame[..., 0] //= 3
    return frame


@pytest.mark.parametrize("record", [RGB_MODEL, GRAY_MODEL], ids=["rgb-model", "gray-model"])
def test_rgb_frames_read_as_rgb_equal_the_bgr_frames(record: ModelRecord) -> None:
    bgr = _colourful()
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    expected = to_model_image(bgr, record)
    assert np.array_equal(to_model_image(rgb, record, color="rgb"), expected)
    # Read with the wrong order, the model sees another image: the option matters.
    assert not np.array_equal(to_model_image(rgb, record, color="bgr"), expected)
    # Alpha channels in either order.
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    assert np.array_equal(to_model_image(bgra, record), expected)
    assert np.array_equal(to_model_image(rgba, record, color="rgb"), expected)


def test_mono_frames_feed_colour_models_and_colour_frames_mono_models() -> None:
    gray = _colourful()[..., 1].copy()
    as_rgb = to_model_image(gray, RGB_MODEL)
    assert as_rgb.shape == (24, 24, 3)
    assert np.array_equal(as_rgb[..., 0], as_rgb[..., 1]) and np.array_equal(as_rgb[..., 1], as_rgb[..., 2])
    assert np.array_equal(to_model_image(gray[..., None], RGB_MODEL), as_rgb)
    assert to_model_image(_colourful(), GRAY_MODEL).shape == (24, 24)


def test_uint16_and_float_frames_need_an_explicit_range() -> None:
    frame8 = _colourful()[..., 2].copy()
    frame16 = frame8.astype(np.uint16) * 257  # 0..255 -> 0..65535 exactly
    with pytest.raises(PatchGuardError, match="--value-range") as info:
        to_model_image(frame16, GRAY_MODEL)
    assert "\n" not in str(info.value) and "uint16" in str(info.value)
    assert np.array_equal(to_uint8(frame16, (0, 65535)), frame8)
    assert np.array_equal(to_model_image(frame16, GRAY_MODEL, value_range=(0, 65535)),
                          to_model_image(frame8, GRAY_MODEL))
    floats = frame8.astype(np.float32) / 255.0
    assert np.array_equal(to_uint8(floats, (0.0, 1.0)), frame8)
    # Outside the range clips; NaN reads as 0.
    odd = np.array([[-5.0, 0.5, 2.0, np.nan]], dtype=np.float32)
    assert to_uint8(odd, (0.0, 1.0)).tolist() == [[0, 128, 255, 0]]
    for bad in [(1, 1), (2, 1), (0, float("inf")), ("a", 1)]:
        with pytest.raises(PatchGuardError, match="range"):
            to_uint8(floats, bad)


def test_bad_colour_name_is_one_line() -> None:
    with pytest.raises(PatchGuardError, match="color must be one of bgr, rgb, got 'yuv'"):
        to_model_image(_colourful(), RGB_MODEL, color="yuv")


def test_overlay_view_is_bgr() -> None:
    bgr = _colourful()
    assert np.array_equal(to_bgr8(np.ascontiguousarray(bgr[..., ::-1]), "rgb"), bgr)
    assert np.array_equal(to_bgr8(bgr), bgr)
    assert to_bgr8(bgr[..., 0].astype(np.uint16) * 257, value_range=(0, 65535)).ndim == 2


def test_pipeline_colour_option_and_per_call_override(default_onnx: Path) -> None:
    frames, _ = fashion_frames(6, (84, 84))
    # Tint each garment so the channels differ (the bundled model is gray: BGR and RGB weigh them differently).
    tinted = [np.ascontiguousarray(f * np.array([0.3, 0.6, 1.0])).astype(np.uint8) for f in frames]
    swapped = [np.ascontiguousarray(f[..., ::-1]) for f in tinted]
    with Pipeline.from_engine(default_onnx) as bgr_pipe, \
            Pipeline.from_engine(default_onnx, color="rgb") as rgb_pipe:
        for bgr, rgb in zip(tinted, swapped):
            want = bgr_pipe(bgr)
            for got in (rgb_pipe(rgb), bgr_pipe(rgb, color="rgb")):
                assert (got.label, got.certified, got.certified_patch_px, got.masked_box) == \
                    (want.label, want.certified, want.certified_patch_px, want.masked_box)
    with pytest.raises(PatchGuardError, match="color"):
        Pipeline.from_engine(default_onnx, color="hsv")
