"""ROS bags in and out (MCAP, sqlite3, ROS 1), with the pure-Python ``rosbags``.

:class:`BagSource` reads one image topic (``sensor_msgs/msg/Image`` or
``CompressedImage``) of a bag as frames timed by their header stamps.
:class:`BagSink` writes a run's results as a ROS 2 bag that Foxglove or
rviz can play beside the drive: the overlay (``sensor_msgs/CompressedImage``,
JPEG) and the result (``std_msgs/String`` holding the JSONL frame object),
both at the input frame's header stamp; :mod:`.rosmsg` holds the layouts.

rosbags is the ``[ros]`` extra, imported on first use. No ROS install needed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from .errors import PatchGuardError, first_line, lazy_import
from .files import PathText, ensure_dir
from .rosmsg import (
    COMPRESSED,
    IMAGE_TYPES,
    OVERLAY_TOPIC,
    RESULT_TOPIC,
    STRING,
    message_to_frame,
    result_messages,
    rosbags_types,
    stamp_to_ns,
)
from .sources import FrameSource, SourceFrame

if TYPE_CHECKING:
    from .pipeline import StreamItem

log = logging.getLogger(__name__)

BAG_SUFFIXES = (".mcap", ".db3", ".bag")


def is_bag(path: PathText) -> bool:
    """A bag file by suffix, or a rosbag2 folder (it holds ``metadata.yaml``)."""
    p = Path(path)
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.suffix.lower() in BAG_SUFFIXES and p.is_file()


def _rosbag_error(path: Path, exc: BaseException) -> PatchGuardError:
    return PatchGuardError(f"{path} cannot be read as a ROS bag: {first_line(exc)}")


class BagSource(FrameSource):
    """The frames of one image topic of a bag, in log order.

    ``topic`` may be omitted when the bag holds exactly one image topic; a
    missing or wrong one is an error listing the image topics there are.
    Each frame's ``stamp_ns`` is its header stamp (the log time where the
    stamp is zero); ``color`` is its encoding's order (rgb8: "rgb").
    """

    def __init__(self, path: PathText, topic: Optional[str] = None) -> None:
        highlevel = lazy_import("rosbags.highlevel", "ros")
        typesys = lazy_import("rosbags.typesys", "ros")
        self.path = Path(path)
        # Bags without embedded definitions (older sqlite3 / ROS 1) decode with the latest standard types.
        self._reader: Any = highlevel.AnyReader(
            [self.path], default_typestore=typesys.get_typestore(typesys.Stores.LATEST))
        try:
            self._reader.open()
        except Exception as exc:  # rosbags raises several unrelated types for a bad file
            raise _rosbag_error(self.path, exc) from None
        try:
            images = {name: info for name, info in self._reader.topics.items()
                      if info.msgtype in IMAGE_TYPES}
            listing = ", ".join(f"{name} ({info.msgtype.split('/')[-1]}, {info.msgcount})"
                                for name, info in sorted(images.items())) or "none"
            if topic is None:
                if len(images) != 1:
                    raise PatchGuardError(f"{self.path}: choose an image topic with --topic; "
                                          f"image topics: {listing}")
                topic = next(iter(images))
                log.info("%s: reading %s", self.path, topic)
            if topic not in images:
                raise PatchGuardError(f"{self.path} has no image topic {topic!r}; image topics: {listing}")
            info = images[topic]
        except BaseException:
            self._reader.close()
            raise
        self.topic = topic
        self.msgtype: str = info.msgtype
        self._connections = [c for c in self._reader.connections if c.topic == topic]
        span = (self._reader.end_time - self._reader.start_time) / 1e9
        fps = (info.msgcount - 1) / span if info.msgcount > 1 and span > 0 else None
        super().__init__(f"{self.path}:{topic}", info.msgcount, fps)

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._reader is None:
            return
        index = 0
        try:
            for connection, logged_ns, raw in self._reader.messages(connections=self._connections):
                msg = self._reader.deserialize(raw, connection.msgtype)
                try:
                    frame, color = message_to_frame(msg, connection.msgtype)
                except PatchGuardError as exc:
                    if connection.msgtype == COMPRESSED:  # one bad JPEG: skip it, as a corrupt image file
                        log.warning("%s: skipping message %d: %s", self.description, index, exc)
                        continue
                    raise
                stamp = stamp_to_ns(msg.header.stamp) or int(logged_ns)
                yield SourceFrame(index, frame, self.description, color=color, stamp_ns=stamp,
                                  frame_id=str(msg.header.frame_id))
                index += 1
        except PatchGuardError:
            raise
        except Exception as exc:  # a truncated or corrupt bag ends like a dropped stream (exit 3)
            self.lost = f"bag ended with an error after {index} frames: {first_line(exc)}"

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def open_bag(path: PathText, topic: Optional[str] = None) -> BagSource:
    return BagSource(path, topic)


class BagSink:
    """``--save-bag OUT``: results as a ROS 2 bag, complete or absent.

    ``OUT.mcap`` is one MCAP file (what Foxglove opens, ``ros2 bag play``
    plays, rosbags reads); any other name is a rosbag2 folder (MCAP storage,
    ``metadata.yaml``). It is written under a temporary name beside the
    target and moved into place by :meth:`close`; a failed run leaves
    nothing. An existing folder is never replaced.
    """

    def __init__(self, target: PathText, overlay_topic: str = OVERLAY_TOPIC,
                 result_topic: str = RESULT_TOPIC, typestore: Any = None) -> None:
        rosbag2 = lazy_import("rosbags.rosbag2", "ros")
        typesys = lazy_import("rosbags.typesys", "ros")
        self.path = Path(target)
        self.single_file = self.path.suffix.lower() == ".mcap"
        if self.path.is_dir():
            raise PatchGuardError(f"--save-bag {self.path} exists as a folder; choose a new name")
        if not self.single_file and self.path.exists():
            raise PatchGuardError(f"--save-bag {self.path} exists; choose a new name (or NAME.mcap)")
        ensure_dir(self.path.parent)
        self._store = typestore or typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        self._types = rosbags_types(self._store)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".part",
                                              dir=self.path.parent))
        self._bag_dir = self._staging / (self.path.stem if self.single_file else self.path.name)
        self._writer: Any = rosbag2.Writer(self._bag_dir, version=rosbag2.Writer.VERSION_LATEST,
                                           storage_plugin=rosbag2.StoragePlugin.MCAP)
        try:
            self._writer.open()
            self._overlay = self._writer.add_connection(overlay_topic, COMPRESSED, typestore=self._store)
            self._result = self._writer.add_connection(result_topic, STRING, typestore=self._store)
        except Exception as exc:
            self._discard()
            raise PatchGuardError(f"cannot write the bag {self.path}: {exc}") from None
        self.count = 0

    def write(self, item: StreamItem) -> None:
        """One frame: its overlay and its result row, at the input's stamp (now where
        the source has none)."""
        from .sinks import draw_overlay, item_row

        self.write_view(draw_overlay(item.view, item.result), item_row(item), item.stamp_ns, item.frame_id)

    def write_view(self, view: np.ndarray, row: dict[str, Any], stamp_ns: Optional[int] = None,
                   frame_id: str = "") -> None:
        """``view`` (uint8 BGR or gray overlay) and ``row`` (its result) at ``stamp_ns``."""
        stamp = int(time.time() * 1e9) if stamp_ns is None else int(stamp_ns)
        overlay, result = result_messages(self._types, view, row, stamp, frame_id)
        self._writer.write(self._overlay, stamp, self._store.serialize_cdr(overlay, COMPRESSED))
        self._writer.write(self._result, stamp, self._store.serialize_cdr(result, STRING))
        self.count += 1

    def close(self, keep: bool = True) -> None:
        """Finish the bag and move it into place; ``keep=False`` (a failed run) removes it."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        if not keep:
            with contextlib.suppress(Exception):  # the staging folder goes either way
                writer.abort()
            self._discard()
            return
        try:
            writer.close()
            if self.single_file:
                os.replace(self._bag_dir / f"{self._bag_dir.name}.mcap", self.path)
            else:
                os.replace(self._bag_dir, self.path)
        except OSError as exc:
            raise PatchGuardError(f"cannot write the bag {self.path}: {exc.strerror or exc}") from None
        finally:
            self._discard()

    def _discard(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)
