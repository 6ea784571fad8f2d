"""Preprocessing from the model record: the one module shared by training,
export parity checks, calibration and the runtime.

Frames come in as OpenCV delivers them (uint8 BGR, or grayscale); the model
sees float32 NCHW, resized (and centre-cropped when ``crop_fraction`` < 1),
in RGB or grayscale, normalised with the record's mean/std.
"""
from __future__ import annotations

import numpy as np

from .errors import PatchGuardError
from .metadata import ModelRecord


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
    mean = np.asarray(record.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(record.std, dtype=np.float32) * 255.0)
    out = (images.astype(np.float32) - mean) * scale
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def to_model_image(frame: np.ndarray, record: ModelRecord) -> np.ndarray:
    """One frame (H, W) gray or (H, W, 3) BGR uint8 -> model-size uint8 image.

    Gray for 1-channel models, RGB for 3-channel ones; resized with OpenCV
    (bilinear), centre-cropped first when ``record.crop_fraction`` < 1.
    """
    from .errors import lazy_import

    cv2 = lazy_import("cv2", "cpu")
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        image = frame if record.in_channels == 1 else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    elif frame.ndim == 3 and frame.shape[2] in (3, 4):
        code = (cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY) \
            if record.in_channels == 1 else \
            (cv2.COLOR_BGR2RGB if frame.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
        image = cv2.cvtColor(frame, code)
    else:
        raise PatchGuardError(f"cannot read a frame of shape {frame.shape} as an image")
    out_h, out_w = record.input_size
    if record.crop_fraction < 1.0:
        h, w = image.shape[:2]
        short = min(h, w)
        top = int(round((h - short * record.crop_fraction) / 2))
        left = int(round((w - short * record.crop_fraction) / 2))
        side = int(round(short * record.crop_fraction))
        image = image[top : top + side, left : left + side]
    if image.shape[:2] != (out_h, out_w):
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return image


def preprocess(frames: list[np.ndarray], record: ModelRecord) -> np.ndarray:
    """Frames as OpenCV reads them -> float32 NCHW batch for the model."""
    return normalize(np.stack([to_model_image(f, record) for f in frames]), record)
