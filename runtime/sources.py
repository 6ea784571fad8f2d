"""Where frames come from: cameras, videos, images, folders, globs, streams.

:func:`open_source` turns what the user typed into a :class:`FrameSource`,
an iterator of :class:`SourceFrame`: the frame (uint8 BGR (H, W, 3) as
OpenCV reads it; ROS bags give their encoding's own order and type), the
file or stream it came from, and its capture time where the source knows it. A stream that ends
or drops stops the iteration and sets :attr:`FrameSource.lost` (why: a live
source ended, a video decoded fewer frames than it holds), which pg-run turns
into exit status 3; a corrupt image in a folder is skipped with one warning
(``logging``), a single image that cannot be read is an error; files that are
not images are ignored.

Also the image readers the calibration, export and training stages share:
:func:`list_images`, :func:`read_image`, :func:`list_image_folder` (read by :mod:`.datasets`).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from .errors import PatchGuardError, first_line, lazy_import
from .files import PathText

log = logging.getLogger(__name__)

# Still-image formats OpenCV decodes; anything else in a folder is ignored.
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".jp2", ".avif",
})
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """What a frame carries from its source, from reading to every sink.

    ``color``: the channel order of a 3/4-channel image ("bgr" or "rgb");
    ``stamp_ns``: capture time in integer nanoseconds (a ROS header stamp),
    None where the source has none; ``frame_id``: the ROS coordinate frame,
    "" elsewhere. Keyword-only, after the fields of the records built on it.
    """

    color: str = "bgr"
    stamp_ns: Optional[int] = None
    frame_id: str = ""

    @property
    def capture_time(self) -> Optional[float]:
        """``stamp_ns`` in seconds (float), or None."""
        return None if self.stamp_ns is None else self.stamp_ns / 1e9


@dataclass(frozen=True)
class SourceFrame(Provenance):
    """One frame as a source delivers it: ``image`` (H, W) or (H, W, C), the
    ``index``-th of the source called ``name``, with its :class:`Provenance`."""

    index: int
    image: np.ndarray
    name: str


Frame = SourceFrame  # the name the iterators below are typed with
# Largest still image decoded (16384 x 16384): a decompression bomb is refused before allocating.
MAX_IMAGE_PIXELS = 1 << 28
UNREADABLE = f"not a readable image (empty, truncated, corrupt, or over {MAX_IMAGE_PIXELS} pixels)"


def opencv() -> Any:
    """cv2, with its own console logging silenced.

    OpenCV and its FFmpeg print warnings straight to stderr (a missing camera,
    a corrupt PNG, a truncated video); this module reports those itself, one
    line each, so theirs would only be noise.
    """
    # Both read on first use: FFmpeg quiet (AV_LOG_QUIET), and OpenCV's own limit on decoded
    # image pixels (it checks the header before allocating) lowered to ours.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    cv2 = lazy_import("cv2", "cpu")
    with contextlib.suppress(AttributeError):  # very old OpenCV builds lack cv2.utils.logging
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(folder: PathText, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by suffix), sorted by path; other files ignored.

    The one lister of the project (pg-run's folders, class folders, calibration, export
    parity). A missing, non-folder or unreadable ``folder`` is a one-line error; an
    unreadable sub-folder is skipped with a warning.
    """
    folder = Path(folder)
    if not folder.exists():
        raise PatchGuardError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise PatchGuardError(f"{folder} is not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PatchGuardError(f"folder {folder} is not readable")
    if not recursive:
        return sorted(p for p in folder.iterdir() if is_image_file(p))
    problems: list[OSError] = []
    found: list[Path] = []
    for root, _, files in os.walk(folder, onerror=problems.append):
        found.extend(path for path in (Path(root) / name for name in files) if is_image_file(path))
    for problem in problems:
        log.warning("skipping unreadable folder %s: %s", problem.filename, problem.strerror)
    return sorted(found)


def read_image(path: PathText) -> Optional[np.ndarray]:
    """uint8 BGR (H, W, 3) image, or None when the file is unreadable or corrupt."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # imread cannot take every path (unicode)
    except OSError:
        return None
    return decode_image(data)


def decode_image(data: np.ndarray, as_sent: bool = False) -> Optional[np.ndarray]:
    """The bytes of an image file (uint8 (n,)) -> uint8 BGR (H, W, 3), or None when corrupt.

    The one image decoder. ``as_sent``: keep the file's own layout and depth
    instead (gray (H, W), BGRA, 16-bit: ``IMREAD_UNCHANGED``), for callers
    that judge those themselves (pg-serve's ``image`` input).
    """
    cv2 = opencv()  # quiet, and with the project's decoded-pixel limit
    if data.size == 0:
        return None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED if as_sent else cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return image if image is not None and image.size else None


def list_image_folder(folder: PathText) -> tuple[list[Path], np.ndarray, list[str]]:
    """The image files of a class-per-sub-folder set, in reading order, their int64
    labels (N,) and the class names (the sorted sub-folder names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PatchGuardError(f"{folder} is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise PatchGuardError(f"{folder} has no sub-folders; expected one sub-folder per class")
    paths, labels = [], []
    for label, sub in enumerate(classes):
        found = list_images(sub)
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels, dtype=np.int64), [p.name for p in classes]


def read_images(paths: list[Path]) -> tuple[list[np.ndarray], list[int]]:
    """The readable images of ``paths`` (BGR, as read) and their positions in it;
    corrupt ones skipped with one warning each."""
    images, kept = [], []
    for n, path in enumerate(paths):
        image = read_image(path)
        if image is None:
            log.warning("skipping %s: not a readable image", path)
            continue
        images.append(image)
        kept.append(n)
    return images, kept


class FrameSource:
    """Iterator of :class:`SourceFrame`; ``length`` is None for live streams."""

    def __init__(self, description: str, length: Optional[int], fps: Optional[float]) -> None:
        self.description = description
        self.length = length
        self.fps = fps
        # Set when iteration stopped early (a dropped stream, a truncated video): why, in words.
        self.lost: Optional[str] = None
        self.skipped = 0  # unreadable files passed over

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageFiles(FrameSource):
    """Still images read one by one, corrupt ones skipped with a warning."""

    def __init__(self, paths: list[Path], description: str) -> None:
        super().__init__(description, len(paths), None)
        self.paths = paths

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for path in self.paths:
            frame = read_image(path)
            if frame is None:
                log.warning("skipping %s: %s", path, UNREADABLE)
                self.skipped += 1
                continue
            yield SourceFrame(index, frame, str(path))
            index += 1
        if index == 0:
            raise PatchGuardError(f"{self.description}: none of its {len(self.paths)} image files "
                                  f"can be read ({UNREADABLE})")


class VideoStream(FrameSource):
    """An open ``cv2.VideoCapture``: a camera, a video file, a URL or a pipeline."""

    def __init__(self, capture: Any, description: str, live: bool) -> None:
        cv2 = opencv()
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        super().__init__(description, None if live or count <= 0 else count, fps if fps > 0 else None)
        self.capture = capture
        self.live = live

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self.capture is not None:
            try:
                ok, frame = self.capture.read()
            except Exception as exc:  # cv2.error from a backend that lost its stream
                self.lost = f"stream error after {index} frames: {first_line(exc)}"
                return
            if not ok or frame is None:
                # End of file, or the stream dropped: stop cleanly, and say which.
                if self.live:
                    self.lost = f"the live source stopped delivering frames after {index}"
                elif self.length is not None and index < self.length:
                    self.lost = f"only {index} of the {self.length} frames could be decoded"
                return
            yield SourceFrame(index, frame, self.description)
            index += 1

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


def _capture(target: Union[int, str], api: Optional[int] = None) -> Any:
    cv2 = opencv()
    capture = cv2.VideoCapture(target) if api is None else cv2.VideoCapture(target, api)
    return capture if capture.isOpened() else None


def _has_gstreamer(cv2: Any) -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def open_source(source: str, topic: Optional[str] = None) -> FrameSource:
    """A frame source from ``--source``: bag, file, folder, glob, URL or GStreamer pipeline.

    Checked in this order: a ROS bag (``.mcap``, ``.db3``, ``.bag``, or a
    rosbag2 folder with ``metadata.yaml``; ``topic`` picks its image topic,
    :mod:`.rosbag`), an existing folder (its images, sorted, recursive),
    an existing file (a still image by suffix, else a video), a glob pattern
    (``*?[``), a pipeline string (contains ``!``: ``cv2.CAP_GSTREAMER``, e.g.
    ``nvarguscamerasrc ! ... ! appsink`` for a Jetson CSI camera), a URL.
    """
    from .rosbag import is_bag, open_bag

    if not source.strip():
        raise PatchGuardError("--source is empty; give a file, folder, glob, URL or pipeline")
    path = Path(source)
    if source.startswith(("/dev/video", "/dev/v4l/")) or (source.strip().isdigit() and not path.exists()):
        raise PatchGuardError(f"--source {source} looks like a camera: use --camera {source}")
    if is_bag(path):
        return open_bag(path, topic)
    if topic is not None:
        raise PatchGuardError(f"--topic is for ROS bags (.mcap, .db3, .bag or a rosbag2 folder); "
                              f"{source} is not one")
    cv2 = opencv()
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise PatchGuardError(f"folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return ImageFiles(images, str(path))
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if read_image(path) is None:  # the only frame: an error, not a skipped file
                raise PatchGuardError(f"{path} cannot be read: {UNREADABLE}")
            return ImageFiles([path], str(path))
        capture = _capture(str(path))
        if capture is None:
            raise PatchGuardError(f"{path} is neither an image nor a video OpenCV can open")
        return VideoStream(capture, str(path), live=False)
    if any(ch in source for ch in "*?[") and "!" not in source and "://" not in source:
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True))
        images = [p for p in paths if is_image_file(p)]
        if not images:
            raise PatchGuardError(f"no image files match {source!r}")
        return ImageFiles(images, source)
    if "!" in source:
        if not _has_gstreamer(cv2):
            raise PatchGuardError(
                "this OpenCV has no GStreamer support (pip's wheels do not); use the system "
                "OpenCV (e.g. JetPack's) for pipeline sources"
            )
        capture = _capture(source, cv2.CAP_GSTREAMER)
        if capture is None:
            raise PatchGuardError(f"GStreamer pipeline did not start: {source}")
        return VideoStream(capture, "gstreamer", live=True)
    if source.lower().startswith(STREAM_PREFIXES):
        capture = _capture(source)
        if capture is None:
            raise PatchGuardError(f"stream {source} cannot be opened")
        return VideoStream(capture, source, live=True)
    raise PatchGuardError(f"source {source!r} is no file, folder, glob, URL or GStreamer pipeline")
