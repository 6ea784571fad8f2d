"""Preprocessing from the model record: the one module shared by training,
export parity checks, calibration and the runtime.

Frames come in as OpenCV delivers them (uint8 BGR, or grayscale); the model
sees float32 NCHW, resized (and centre-cropped when ``crop_fraction`` < 1),
in RGB or grayscale, normalised with the record's mean/std.

Interpolation is chosen per frame size, deliberately (:func:`resize_plan`):
``INTER_AREA`` when no axis is enlarged and some axis shrinks by 2x or more
(a camera frame to a small model input: every camera pixel is averaged in, no
aliasing, as image datasets are usually downsampled), ``INTER_LINEAR``
otherwise (mild shrinking, where it looks the same and OpenCV's area kernel
costs about 8x more, measured for 420 -> 224 px on this project's CPUs; and
enlarging, where ``INTER_AREA`` degenerates to a bilinear variant anyway).
The certificate's
footprint (:mod:`patchguard.runtime.footprint`) is derived for exactly these
kernels from the same :class:`ResizePlan`, so the two cannot drift apart.
Images already at model size (Fashion-MNIST arrays) are not resampled.

Colour conversion is per pixel, so where it happens does not change the
footprint: BGR -> RGB (a channel swap, exact either way) runs after the
resize on the small image; BGR -> gray runs before it (one channel to resize).

Colour order and sample type are stated, never guessed: ``color`` says how
a 3- or 4-channel frame is ordered (``"bgr"`` as OpenCV reads, ``"rgb"`` as
ROS ``rgb8`` images and many SDKs deliver); frames that are not uint8 (ROS
``mono16``, depth-like or float images) need an explicit ``value_range``
(lo, hi) that maps linearly onto 0..255 (:func:`to_uint8`), also per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .errors import PatchGuardError, lazy_import
from .geometry import Pair
from .metadata import ModelRecord

# Kernels the footprint knows how to bound; "none" = sizes already match.
INTERPOLATIONS = ("none", "area", "linear")
# Shrinking by this factor or more (on some axis) uses INTER_AREA.
AREA_FACTOR = 2
# Channel orders a 3/4-channel frame may have.
COLORS = ("bgr", "rgb")


@dataclass(frozen=True)
class ResizePlan:
    """How a frame of one size becomes the model input.

    ``crop`` is (top, left, height, width) in frame pixels: the region the
    model sees; it is then resized to ``input_size`` (H, W) with
    ``interpolation`` (one of :data:`INTERPOLATIONS`).
    """

    frame_size: Pair
    crop: tuple[int, int, int, int]
    input_size: Pair
    interpolation: str

    @property
    def scale(self) -> tuple[float, float]:
        """Camera pixels per model pixel along (rows, columns)."""
        return self.crop[2] / self.input_size[0], self.crop[3] / self.input_size[1]

    def cv2_flag(self, cv2: Any) -> int:
        return cv2.INTER_AREA if self.interpolation == "area" else cv2.INTER_LINEAR


def resize_plan(frame_size: Sequence[int], record: ModelRecord) -> ResizePlan:
    """The crop box and interpolation for frames of ``frame_size`` (h, w)."""
    h, w = int(frame_size[0]), int(frame_size[1])
    if h < 1 or w < 1:
        raise PatchGuardError(f"cannot preprocess an empty frame of {h}x{w} pixels")
    top, left, ch, cw = 0, 0, h, w
    if record.crop_fraction < 1.0:
        # Centre square of side short * crop_fraction: "resize the short side to
        # input / crop_fraction, then centre-crop input", done in one resize.
        short = min(h, w)
        side = max(1, round(short * record.crop_fraction))
        top = round((h - short * record.crop_fraction) / 2)
        left = round((w - short * record.crop_fraction) / 2)
        ch, cw = side, side
    out_h, out_w = record.input_size
    if (ch, cw) == (out_h, out_w):
        interpolation = "none"
    elif ch >= out_h and cw >= out_w and (ch >= AREA_FACTOR * out_h or cw >= AREA_FACTOR * out_w):
        interpolation = "area"
    else:
        interpolation = "linear"
    return ResizePlan((h, w), (top, left, ch, cw), (out_h, out_w), interpolation)


def normalize(images: np.ndarray, record: ModelRecord) -> np.ndarray:
    """uint8 images at model size, (N, H, W) gray or (N, H, W, C) RGB -> float32 NCHW."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != record.in_channels:
        raise PatchGuardError(
            f"expected images (N, H, W{', ' + str(record.in_channels) if record.in_channels > 1 else ''})"
            f" for a {record.in_channels}-channel model, got {images.shape}"
        )
    if tuple(images.shape[1:3]) != tuple(record.input_size):
        raise PatchGuardError(
            f"images are {images.shape[1]}x{images.shape[2]} but the model takes "
            f"{record.input_size[0]}x{record.input_size[1]}"
        )
    mean = np.asarray(record.mean, dtype=np.float32) * np.float32(255.0)
    scale = np.float32(1.0) / (np.asarray(record.std, dtype=np.float32) * np.float32(255.0))
    out = np.empty((images.shape[0], images.shape[3], *images.shape[1:3]), dtype=np.float32)
    for c in range(images.shape[3]):
        # Channel by channel straight into NCHW: 4-5x faster than one
        # broadcast expression followed by a transposing copy.
        np.subtract(images[..., c], mean[c], out=out[:, c], dtype=np.float32)
        out[:, c] *= scale[c]
    return out


def check_color(color: str) -> str:
    """``color`` lower-cased, or a one-line error naming the choices."""
    found = str(color).lower()
    if found not in COLORS:
        raise PatchGuardError(f"color must be one of {', '.join(COLORS)}, got {color!r}")
    return found


def check_value_range(value_range: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    """``(lo, hi)`` as floats with lo < hi, both finite; None stays None."""
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise PatchGuardError(f"value range must be two numbers LO HI, got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise PatchGuardError(f"value range needs finite LO < HI, got {lo:g} {hi:g}")
    return lo, hi


def to_uint8(frame: np.ndarray, value_range: Optional[Sequence[float]] = None) -> np.ndarray:
    """A frame as uint8: uint8 frames unchanged; others mapped from ``value_range``.

    ``(lo, hi)`` maps linearly onto 0..255 (lo -> 0, hi -> 255, outside
    clipped, NaN -> 0), per pixel. A non-uint8 frame without a range is an
    error: guessing (the dtype's full range, the frame's own min/max) would
    change the image from frame to frame or wash it out, silently.
    """
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype.kind not in "uif":
        raise PatchGuardError(f"frames must hold numbers, got {frame.dtype}")
    checked = check_value_range(value_range)
    if checked is None:
        hint = " (0 65535 for full-range 16-bit)" if frame.dtype == np.uint16 else ""
        raise PatchGuardError(
            f"frames are {frame.dtype}, not uint8: give the value range that maps to 0..255 "
            f"(--value-range LO HI, or value_range=(lo, hi) in the API){hint}")
    lo, hi = checked
    scaled = (frame.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.nan_to_num(np.clip(np.rint(scaled), 0, 255), nan=0.0).astype(np.uint8)


def to_bgr8(frame: np.ndarray, color: str = "bgr",
            value_range: Optional[Sequence[float]] = None) -> np.ndarray:
    """A frame as OpenCV draws and encodes it: uint8, gray or BGR (alpha dropped)."""
    cv2 = lazy_import("cv2", "cpu")
    image = to_uint8(frame, value_range)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    if check_color(color) == "rgb":
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGR)
    return image if image.shape[2] == 3 else cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)


def to_model_image(frame: np.ndarray, record: ModelRecord, color: str = "bgr",
                   value_range: Optional[Sequence[float]] = None) -> np.ndarray:
    """One frame (H, W) gray or (H, W, 3|4) -> model-size uint8 image.

    ``color`` is the frame's channel order (``"bgr"``: BGR(A) as OpenCV
    reads; ``"rgb"``: RGB(A)); frames that are not uint8 are mapped to it with
    ``value_range`` first (:func:`to_uint8`). Gray for 1-channel models, RGB
    for 3-channel ones; centre-cropped first when ``record.crop_fraction`` < 1,
    then resized as :func:`resize_plan` says.
    """
    cv2 = lazy_import("cv2", "cpu")
    rgb = check_color(color) == "rgb"
    frame = to_uint8(frame, value_range)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise PatchGuardError(f"cannot read a frame of shape {frame.shape} as an image")
    plan = resize_plan(frame.shape[:2], record)
    top, left, ch, cw = plan.crop
    image = frame[top : top + ch, left : left + cw]
    gray_model = record.in_channels == 1
    if gray_model and image.ndim == 3:
        codes = ((cv2.COLOR_BGR2GRAY, cv2.COLOR_BGRA2GRAY), (cv2.COLOR_RGB2GRAY, cv2.COLOR_RGBA2GRAY))
        image = cv2.cvtColor(image, codes[rgb][image.shape[2] == 4])
    if plan.interpolation != "none":
        out_h, out_w = plan.input_size
        image = cv2.resize(image, (out_w, out_h), interpolation=plan.cv2_flag(cv2))
    if not gray_model:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if rgb else cv2.COLOR_BGRA2RGB)
        elif not rgb:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def preprocess(frames: list[np.ndarray], record: ModelRecord) -> np.ndarray:
    """Frames as OpenCV reads them -> float32 NCHW batch for the model."""
    return normalize(np.stack([to_model_image(f, record) for f in frames]), record)
