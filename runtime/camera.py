"""Live cameras: by index, device path or udev by-id path; size, FPS, latest frame, reconnect.

``--camera`` takes ``0``, ``/dev/video0`` or ``/dev/v4l/by-id/usb-...-video-index0``
(what udev rules give a robot: stable across reboots and USB ports). Links
are resolved to their ``/dev/videoN`` and opened with V4L2.

A robot wants the *latest* frame, not a backlog: OpenCV's own buffer is set
to one frame, and a grabber thread keeps only the newest frame, so a slow
model skips frames (counted in ``dropped``) instead of falling behind the
world. ``reconnect`` tries that many times to reopen a camera that stops
delivering, waiting 0.5 s, 1 s, 2 s, ... (at most 8 s) between tries; the
count starts afresh after every frame. A camera lost for good sets
``lost`` (pg-run's exit 3), as a dropped stream does.

A video file given as the camera is a recording, not a device: it is read as
``--source`` reads it, every frame to its end. Its end is no outage, so
``reconnect`` does not apply (reopening it would replay it forever).
"""
from __future__ import annotations

import glob
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from .errors import PatchGuardError
from .geometry import as_pair
from .sources import FrameSource, SourceFrame, open_source, opencv

log = logging.getLogger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
READ_TIMEOUT_S = 10.0  # a camera that sends nothing for this long counts as lost


def available_cameras() -> list[str]:
    """Device paths that look like cameras here (Linux), for error messages."""
    found = sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    return found + sorted(glob.glob("/dev/v4l/by-id/*"))


def parse_camera(text: Union[int, str]) -> tuple[Union[int, str], str]:
    """(what to open, description) from ``--camera``: an index or a device path.

    A path must exist; a link (by-id, by-path) is resolved; ``/dev/videoN``
    becomes index N for the V4L2 backend. One-line errors list the cameras there are.
    """
    value = str(text).strip()
    if value.isdigit():
        return int(value), f"camera {value}"
    path = Path(value)
    if not path.exists():
        cameras = ", ".join(available_cameras()) or "none found under /dev/video*"
        raise PatchGuardError(f"camera {value} does not exist (cameras here: {cameras}); "
                              "--camera takes an index, /dev/videoN or a /dev/v4l/by-id/... path")
    real = Path(os.path.realpath(path))
    name = real.name
    if name.startswith("video") and name[5:].isdigit():
        return int(name[5:]), f"camera {value}" + (f" ({real})" if real != path else "")
    return str(real), f"camera {value}"


def _configure(capture: Any, size: Optional[tuple[int, int]], fps: Optional[float], description: str) -> None:
    """Ask for the size (height, width), FPS and a one-frame buffer; warn (once) where the camera says no."""
    cv2 = opencv()
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # honoured by V4L2 and some others; the thread does the rest
    if size is not None:
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[0])
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[1])
        got = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        if got != size:
            log.warning("%s delivers %dx%d (HxW), not the %dx%d asked for (--camera-frame-size)",
                        description, got[0], got[1], size[0], size[1])
    if fps is not None:
        capture.set(cv2.CAP_PROP_FPS, float(fps))
        got_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if got_fps > 0 and abs(got_fps - fps) > 0.5:
            log.warning("%s runs at %.1f FPS, not the %.1f asked for (--camera-fps)",
                        description, got_fps, fps)


class CameraStream(FrameSource):
    """A live camera as a frame source (see the module docstring).

    ``opener`` returns an opened ``cv2.VideoCapture`` or None; it is called
    again to reconnect. ``latest``: keep only the newest frame (default);
    False delivers every frame the capture returns, in order. Frames are
    stamped with the Unix time they were grabbed (``stamp_ns``).
    """

    def __init__(self, opener: Callable[[], Any], description: str, reconnect: int = 0,
                 latest: bool = True, size: Optional[tuple[int, int]] = None,
                 fps: Optional[float] = None) -> None:
        if reconnect < 0:
            raise PatchGuardError(f"--reconnect must be 0 or more, got {reconnect}")
        self._opener = opener
        self._size, self._fps = size, fps
        capture = self._open()
        if capture is None:
            raise PatchGuardError(f"{description} cannot be opened (no such camera, or it is busy)")
        cv2 = opencv()
        rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        super().__init__(description, None, rate if rate > 0 else None)
        self.capture: Any = capture
        self.reconnect = reconnect
        self.latest = latest
        self.dropped = 0      # frames the camera delivered that the run never saw (latest mode)
        self.reconnects = 0   # successful reopenings
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _open(self) -> Any:
        capture = self._opener()
        if capture is None or not capture.isOpened():
            return None
        _configure(capture, self._size, self._fps, getattr(self, "description", "camera"))
        return capture

    def _frames(self, capture: Any) -> Iterator[tuple[np.ndarray, int]]:
        """(frame, grab time ns) from one open capture until it fails."""
        if not self.latest:
            while not self._closed.is_set():
                try:
                    ok, frame = capture.read()
                except Exception:  # cv2.error from a backend that lost its device
                    return
                if not ok or frame is None:
                    return
                yield frame, time.time_ns()
            return
        slot: list[Optional[tuple[np.ndarray, int]]] = [None]
        done = threading.Event()
        ready = threading.Condition()

        def grab() -> None:
            while not self._closed.is_set():
                try:
                    ok, frame = capture.read()
                except Exception:
                    ok, frame = False, None
                with ready:
                    if not ok or frame is None:
                        done.set()
                        ready.notify_all()
                        return
                    if slot[0] is not None:
                        self.dropped += 1  # the run was busy: this frame is superseded
                    slot[0] = (frame, time.time_ns())
                    ready.notify_all()

        thread = threading.Thread(target=grab, name="patchguard-camera", daemon=True)
        self._thread = thread
        thread.start()
        try:
            while True:
                with ready:
                    ready.wait_for(lambda: slot[0] is not None or done.is_set(), timeout=READ_TIMEOUT_S)
                    item, slot[0] = slot[0], None
                    if item is None:
                        return  # the grabber stopped, or nothing came for READ_TIMEOUT_S
                yield item
        finally:
            self._stop_grabber()

    def _stop_grabber(self) -> None:
        # The capture must not be released while the grabber is inside read().
        if self._thread is not None:
            self._closed.set()
            self._thread.join(timeout=READ_TIMEOUT_S)
            self._thread = None
            self._closed.clear()

    def __iter__(self) -> Iterator[SourceFrame]:
        index = 0
        while self.capture is not None:
            for frame, stamp in self._frames(self.capture):
                yield SourceFrame(index, frame, self.description, color="bgr", stamp_ns=stamp)
                index += 1
                if self.capture is None:
                    return
            if self.capture is None:
                return
            self.capture.release()
            self.capture = None
            for attempt, wait in enumerate(self._waits(), start=1):
                log.warning("%s stopped delivering frames; reconnecting in %.1f s (try %d of %d)",
                            self.description, wait, attempt, self.reconnect)
                time.sleep(wait)
                self.capture = self._open()
                if self.capture is not None:
                    self.reconnects += 1
                    log.warning("%s reconnected", self.description)
                    break
            if self.capture is None:
                tries = f" and {self.reconnect} reconnect tries failed" if self.reconnect else \
                    " (--reconnect N retries)"
                self.lost = f"{self.description} stopped delivering frames after {index}{tries}"
                return

    def _waits(self) -> list[float]:
        return [BACKOFF_S[min(i, len(BACKOFF_S) - 1)] for i in range(self.reconnect)]

    def close(self) -> None:
        self._stop_grabber()
        self._closed.set()
        if self.capture is not None:
            self.capture.release()
            self.capture = None


def open_camera(camera: Union[int, str], size: Optional[tuple[int, int]] = None, fps: Optional[float] = None,
                reconnect: int = 0, latest: bool = True) -> FrameSource:
    """``--camera`` with its options, opened (one-line errors). ``size`` is (height, width).

    A regular file (a recording) comes back as ``open_source`` opens it; a warning
    names the camera options given that do not apply to it.
    """
    target, description = parse_camera(camera)
    wanted = as_pair(size, "camera frame size") if size is not None else None
    if fps is not None and not fps > 0:
        raise PatchGuardError(f"--camera-fps must be positive, got {fps}")
    if isinstance(target, str) and os.path.isfile(target):
        if reconnect < 0:  # CameraStream's own check is not reached for a file
            raise PatchGuardError(f"--reconnect must be 0 or more, got {reconnect}")
        unused = [flag for flag, given in (("--reconnect", reconnect), ("--camera-frame-size", wanted),
                                           ("--camera-fps", fps)) if given]
        if unused:
            log.warning("%s is a file, not a device: it is read to its end like --source (%s %s not apply)",
                        description, ", ".join(unused), "does" if len(unused) == 1 else "do")
        return open_source(target)
    cv2 = opencv()
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") and isinstance(target, int) else cv2.CAP_ANY

    def opener() -> Any:
        capture = cv2.VideoCapture(target, api)
        return capture if capture.isOpened() else None

    return CameraStream(opener, description, reconnect=reconnect, latest=latest, size=wanted, fps=fps)
