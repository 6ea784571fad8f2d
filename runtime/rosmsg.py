"""ROS 2 messages <-> frames and results: the conversions a bag and a node share.

Works on any object with the fields of ``sensor_msgs/msg/Image``,
``sensor_msgs/msg/CompressedImage``, ``std_msgs/msg/String`` (rclpy's
generated classes and rosbags' dataclasses alike), so the same functions
serve ``pg-run --source drive.mcap`` and a node in ``examples/ros2/``.
Neither rclpy nor rosbags is imported here; :func:`rosbags_types` builds
messages with rosbags' classes (the ``[ros]`` extra).

Message layout of the results (what ``--save-bag`` writes and the node publishes):

- the overlay as ``sensor_msgs/msg/CompressedImage`` (JPEG), with the input
  frame's header (stamp and frame_id);
- the per-frame result as ``std_msgs/msg/String`` whose ``data`` is the same
  JSON object as a ``pg-run --jsonl`` frame line, plus ``stamp`` {sec,
  nanosec} and ``frame_id`` copied from the input header (String has no
  header of its own); in a bag its log time is the input's header stamp.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .errors import PatchGuardError, lazy_import

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
IMAGE_TYPES = (IMAGE, COMPRESSED)
RESULT_TOPIC = "/patchguard/result"
OVERLAY_TOPIC = "/patchguard/overlay/compressed"

# encoding -> (numpy dtype, channels, colour order). The names follow
# sensor_msgs/image_encodings.hpp; 8UC3 / 8UC4 carry no order and are taken as
# OpenCV's (BGR), as cv_bridge does.
ENCODINGS: dict[str, tuple[str, int, str]] = {
    "rgb8": ("u1", 3, "rgb"), "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgb"), "bgra8": ("u1", 4, "bgr"),
    "mono8": ("u1", 1, "bgr"), "8UC1": ("u1", 1, "bgr"),
    "8UC3": ("u1", 3, "bgr"), "8UC4": ("u1", 4, "bgr"),
    "mono16": ("u2", 1, "bgr"), "16UC1": ("u2", 1, "bgr"),
    "32FC1": ("f4", 1, "bgr"),
}


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (sec, nanosec) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _bytes(data: Any) -> np.ndarray:
    # numpy arrays (rosbags), array.array / bytes / lists (rclpy) alike, without a copy where possible.
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    if isinstance(data, list):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def image_to_frame(msg: Any) -> tuple[np.ndarray, str]:
    """A ``sensor_msgs/Image`` -> (frame (H, W) or (H, W, C), colour order).

    The frame keeps the encoding's sample type (mono16: uint16, 32FC1:
    float32) and order (rgb8 stays RGB); rows honour ``step`` padding and
    ``is_bigendian``. Unsupported encodings are one-line errors naming the
    supported ones.
    """
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        raise PatchGuardError(
            f"image encoding {encoding!r} is not supported; supported: {', '.join(ENCODINGS)}")
    kind, channels, order = ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * channels * dtype.itemsize
    raw = _bytes(msg.data)
    if h < 1 or w < 1 or step < row or raw.size < step * (h - 1) + row:
        raise PatchGuardError(
            f"{encoding} image of {w}x{h} (step {step}) does not fit its {raw.size} data bytes")
    rows = raw[: step * h].reshape(h, step) if raw.size >= step * h else \
        np.concatenate([raw, np.zeros(step * h - raw.size, np.uint8)]).reshape(h, step)
    pixels = np.ascontiguousarray(rows[:, :row]).view(dtype).astype(dtype.newbyteorder("="))
    frame = pixels.reshape(h, w, channels) if channels > 1 else pixels.reshape(h, w)
    return frame, order


def compressed_to_frame(msg: Any) -> tuple[np.ndarray, str]:
    """A ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...) -> (frame, "bgr")."""
    cv2 = lazy_import("cv2", "cpu")
    raw = _bytes(msg.data)
    frame = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if frame is None:
        raise PatchGuardError(f"compressed image ({msg.format or 'no format'}) cannot be decoded")
    return frame, "bgr"  # OpenCV decodes colour images to BGR whatever the format says


def message_to_frame(msg: Any, msgtype: Optional[str] = None) -> tuple[np.ndarray, str]:
    """Either image message -> (frame, colour order); by ``msgtype`` or by its fields."""
    compressed = msgtype == COMPRESSED if msgtype else hasattr(msg, "format")
    return compressed_to_frame(msg) if compressed else image_to_frame(msg)


@dataclass(frozen=True)
class MessageTypes:
    """The message classes to build results with (rosbags' or rclpy's).

    ``pack`` turns bytes into what the classes' ``data`` fields take.
    """

    Header: Callable[..., Any]
    Time: Callable[..., Any]
    Image: Callable[..., Any]
    CompressedImage: Callable[..., Any]
    String: Callable[..., Any]
    pack: Callable[[bytes], Any] = bytes


def rosbags_types(typestore: Any = None) -> MessageTypes:
    """:class:`MessageTypes` from a rosbags typestore (default: ROS 2 Humble's)."""
    if typestore is None:
        typesys = lazy_import("rosbags.typesys", "ros")
        typestore = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    t = typestore.types
    return MessageTypes(
        Header=t["std_msgs/msg/Header"], Time=t["builtin_interfaces/msg/Time"],
        Image=t[IMAGE], CompressedImage=t[COMPRESSED], String=t[STRING],
        pack=lambda data: np.frombuffer(data, dtype=np.uint8).copy())


def header(types: MessageTypes, stamp_ns: int, frame_id: str = "") -> Any:
    """A ``std_msgs/Header`` at ``stamp_ns``."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return types.Header(stamp=types.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def frame_to_image(types: MessageTypes, frame: np.ndarray, stamp_ns: int, frame_id: str = "",
                   encoding: Optional[str] = None) -> Any:
    """A frame -> ``sensor_msgs/Image`` (``encoding`` default: bgr8 / bgra8 / mono8 / mono16 / 32FC1)."""
    frame = np.ascontiguousarray(frame)
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if encoding is None:
        by_shape = {("u1", 1): "mono8", ("u1", 3): "bgr8", ("u1", 4): "bgra8", ("u2", 1): "mono16",
                    ("f4", 1): "32FC1"}
        encoding = by_shape.get((frame.dtype.str[1:], channels), "")
    spec = ENCODINGS.get(encoding)
    if spec is None or np.dtype(spec[0]) != frame.dtype.newbyteorder("=") or spec[1] != channels:
        raise PatchGuardError(f"a {frame.dtype} frame of shape {frame.shape} cannot be sent as "
                              f"{encoding or 'any supported encoding'}")
    little = frame.astype(frame.dtype.newbyteorder("<"), copy=False)
    h, w = frame.shape[:2]
    return types.Image(header=header(types, stamp_ns, frame_id), height=h, width=w,
                       encoding=encoding, is_bigendian=0, step=w * channels * frame.dtype.itemsize,
                       data=types.pack(little.tobytes()))


def frame_to_compressed(types: MessageTypes, frame_bgr: np.ndarray, stamp_ns: int,
                        frame_id: str = "", quality: int = 90) -> Any:
    """A uint8 BGR or gray frame -> JPEG ``sensor_msgs/CompressedImage``."""
    cv2 = lazy_import("cv2", "cpu")
    ok, encoded = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise PatchGuardError(f"OpenCV could not encode a {frame_bgr.shape} frame as JPEG")
    return types.CompressedImage(header=header(types, stamp_ns, frame_id), format="jpeg",
                                 data=types.pack(encoded.tobytes()))


def result_to_string(types: MessageTypes, row: dict[str, Any], stamp_ns: int,
                     frame_id: str = "") -> Any:
    """A result row (a ``--jsonl`` frame line) -> ``std_msgs/String`` with its JSON."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    payload = {**row, "stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id}
    return types.String(data=json.dumps(payload, separators=(",", ":")))


def result_messages(types: MessageTypes, overlay_bgr: np.ndarray, row: dict[str, Any], stamp_ns: int,
                    frame_id: str = "") -> tuple[Any, Any]:
    """(overlay ``CompressedImage``, result ``String``) of one frame, both at ``stamp_ns``."""
    return (frame_to_compressed(types, overlay_bgr, stamp_ns, frame_id),
            result_to_string(types, row, stamp_ns, frame_id))


def run_on_message(pipeline: Any, msg: Any, types: MessageTypes, index: int = 0, source: str = "",
                   msgtype: Optional[str] = None, color: Optional[str] = None
                   ) -> tuple[dict[str, Any], Any, Any]:
    """What a perception node does per image message: (row, overlay msg, result msg).

    The frame is read in the encoding's own colour order (``color`` overrides
    it), run through ``pipeline`` (a :class:`~.pipeline.Pipeline`), and the
    result comes back as the JSONL frame object and the two messages of the
    bag layout, stamped with the input's header.
    """
    import time

    from .pipeline import StreamItem
    from .sinks import draw_overlay, item_row

    frame, order = message_to_frame(msg, msgtype)
    order = color or order
    stamp = stamp_to_ns(msg.header.stamp)
    item = StreamItem(index, source, time.time(), frame, pipeline(frame, color=order), pipeline.value_range,
                      color=order, stamp_ns=stamp, frame_id=str(msg.header.frame_id))
    row = item_row(item)
    overlay = draw_overlay(item.view, item.result)
    return (row, *result_messages(types, overlay, row, stamp, item.frame_id))


def string_to_result(msg: Any) -> dict[str, Any]:
    """The result dict back from a ``/patchguard/result`` message."""
    try:
        found = json.loads(str(msg.data))
    except ValueError as exc:
        raise PatchGuardError(f"result message is not JSON: {exc}") from None
    if not isinstance(found, dict):
        raise PatchGuardError("result message is not a JSON object")
    return found
