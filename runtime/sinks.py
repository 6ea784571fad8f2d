"""Where per-frame results go: JSON lines, an annotated video, a window, a summary.

Every sink has one face, :class:`Sink`: ``write(item)`` with the
:class:`~.pipeline.StreamItem` of a frame (its result, the frame, where and
when it came from), then ``close()``; pg-run hands each item to every sink.

JSON lines are written one frame at a time, each line in a single ``write``,
so a reader can follow the file live and a run that dies leaves only whole
rows behind; a failed write cuts the file back to its last whole row (a
stream log cannot be written atomically; the video, which is useless
half-written, is: it goes to a temporary file that is renamed into place
when the run ends, and removed instead when the disk fills under it).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Protocol

import numpy as np

from .errors import OutputError, PatchGuardError
from .files import LineFile, PathText, temp_beside
from .pipeline import FrameResult, StreamItem
from .sources import opencv

GREEN = (60, 180, 60)
RED = (40, 40, 220)
AMBER = (0, 190, 255)


def frame_row(index: int, source: str, stamp: float, result: FrameResult,
              capture_time: Optional[float] = None) -> dict[str, Any]:
    """One JSONL frame object (:mod:`.resultstream`): schema, frame, source, time
    (Unix seconds of arrival), capture_time (the source's stamp, or None) and
    the result's fields."""
    from .resultstream import SCHEMA

    return {"schema": SCHEMA, "kind": "frame", "frame": index, "source": source,
            "time": round(stamp, 6),
            "capture_time": None if capture_time is None else round(capture_time, 9),
            **result.to_dict()}


class Sink(Protocol):
    """What pg-run writes each processed frame to."""

    def write(self, item: StreamItem) -> None: ...

    def close(self) -> None: ...


def item_row(item: StreamItem) -> dict[str, Any]:
    """The JSONL frame object of a stream item (:func:`frame_row`)."""
    return frame_row(item.index, item.source, item.time, item.result, item.capture_time)


class JsonlSink:
    """``--jsonl FILE|-``: one JSON object per frame, each line whole (:class:`~.files.LineFile`).

    The file is created at the first row (``append``: kept and added to);
    a failed write cuts it back to its last complete row and raises
    :class:`~.errors.OutputError`. ``rows`` counts the rows written.
    ``header`` (:func:`.resultstream.header_row`) goes out just before the
    first row, so every run in the file starts with its header line.
    """

    def __init__(self, target: PathText, append: bool = False,
                 header: Optional[dict[str, Any]] = None) -> None:
        self.target = str(target)
        self._file = LineFile(target, append=append, flag="--jsonl")
        self._header = header
        self._header_lines = 0

    @property
    def rows(self) -> int:
        return self._file.lines - self._header_lines

    def write(self, item: StreamItem) -> None:
        self.write_row(item_row(item))

    def write_row(self, row: dict[str, Any]) -> None:
        """One JSON object as one line (the header goes out before the first)."""
        if self._header is not None:
            header, self._header = self._header, None
            self._file.write(json.dumps(header, separators=(",", ":")))
            self._header_lines = 1
        self._file.write(json.dumps(row, separators=(",", ":")))

    def close(self) -> None:
        self._file.close()


def draw_overlay(frame: np.ndarray, result: FrameResult) -> np.ndarray:
    """A BGR copy of ``frame`` with the label, a certified badge and the masked box."""
    cv2 = opencv()
    if frame.ndim == 2 or frame.shape[2] == 1:
        canvas = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        canvas = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    else:
        canvas = frame.copy()
    h, w = canvas.shape[:2]
    scale = max(0.35, min(h, w) / 480.0)
    thick = max(1, round(scale * 2))
    if result.masked_box is not None:
        x0, y0, x1, y1 = result.masked_box
        cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), AMBER, thick)
    if getattr(result, "abstained", False):
        badge, colour = "abstained (low confidence)", AMBER
    elif result.certified:
        badge, colour = f"CERTIFIED {result.patch_px}px", GREEN
    elif result.certified_patch_px:
        badge, colour = f"certified {result.certified_patch_px}/{result.patch_px}px", AMBER
    else:
        badge, colour = "not certified", RED
    lines = [(result.class_name or str(result.label), (255, 255, 255)), (badge, colour)]
    if getattr(result, "alert", False):
        lines.append(("ALERT: patch suspected", RED))
    for row, (text, fg) in enumerate(lines):
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y = int((row + 1) * (th + base + 6 * scale))
        cv2.rectangle(canvas, (0, y - th - base), (min(w - 1, tw + 6), y + base // 2), (0, 0, 0), -1)
        cv2.putText(canvas, text, (3, y - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, fg, thick,
                    cv2.LINE_AA)
    return canvas


class VideoSink:
    """``--save-video FILE``: the annotated frames, renamed into place on close.

    The container comes from the suffix (``.avi`` -> MJPG, ``.mp4`` -> mp4v);
    the size is fixed by the first frame; later frames of another size are resized.
    OpenCV's writer reports no failed write, so a disk that fills under it would
    leave a truncated video: after every frame the disk must keep room for two
    raw frames (what the writer buffers and the next), and a file finished on a
    disk that is full by then must hold every frame written; otherwise the
    temporary file is removed and :class:`~.errors.OutputError` names the video
    (an earlier file at its path is kept).
    """

    CODECS: ClassVar[dict[str, str]] = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG", ".mov": "mp4v"}

    def __init__(self, target: PathText, fps: Optional[float]) -> None:
        self.path = Path(target)
        if self.path.suffix.lower() not in self.CODECS:
            raise PatchGuardError(
                f"--save-video {self.path}: use one of {', '.join(sorted(self.CODECS))}")
        self.fps = fps if fps and fps > 0 else 30.0
        self._tmp: Optional[Path] = None  # the hidden file beside it, made at the first frame
        self._writer: Any = None
        self._size: Optional[tuple[int, int]] = None
        self.frames = 0  # frames handed to the writer
        self._room = 0   # free bytes the disk must keep: two raw frames (set at the first)
        self._reserve = os.geteuid() == 0  # root may write into the blocks reserved for it

    def write(self, item: StreamItem) -> None:
        cv2 = opencv()
        canvas = draw_overlay(item.view, item.result)
        if self._writer is None:  # created at the first frame, not before
            # Same suffix as the target: OpenCV picks the container from it.
            self._tmp = temp_beside(self.path, f".part{self.path.suffix}")
            self._size = (canvas.shape[1], canvas.shape[0])
            self._room = 2 * canvas.nbytes  # every frame is written at this size; encoded ones are smaller
            fourcc = cv2.VideoWriter_fourcc(*self.CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                self._tmp.unlink(missing_ok=True)
                raise PatchGuardError(f"cannot write video {self.path} (OpenCV's writer did not open)")
        if (canvas.shape[1], canvas.shape[0]) != self._size:
            canvas = cv2.resize(canvas, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(canvas)
        self.frames += 1
        free = self._free_bytes()
        if free < self._room:
            self._fail(f"no space left on device ({free // 1024} KiB free after {self.frames} frames)")

    def _free_bytes(self) -> int:
        """Bytes this process may still write on the video's disk (root may use the reserve)."""
        stat = os.statvfs(self.path.parent)
        return stat.f_frsize * (stat.f_bfree if self._reserve else stat.f_bavail)

    def _fail(self, why: str) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write --save-video {self.path}: {why}; the video was not kept")

    def close(self, keep: bool = True) -> None:
        """Finish the file; ``keep=False`` (a failed run) removes it instead."""
        if self._writer is not None:
            self._writer.release()  # writes the index / trailer
            self._writer = None
        if self._tmp is None or not self._tmp.exists():  # no frame came
            return
        if not keep:
            self._tmp.unlink()
            return
        # Only a disk that filled up now is read back: a backend that counts frames its own
        # way must never cost a good video.
        if self._free_bytes() < self._room and (held := self._frames_held()) != self.frames:
            self._fail(f"no space left on device for its end: the finished file holds {held} of "
                       f"the {self.frames} frames")
        try:
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write --save-video {self.path}: {exc.strerror}") from None

    def _frames_held(self) -> int:
        cv2 = opencv()
        capture = cv2.VideoCapture(str(self._tmp))
        try:
            return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if capture.isOpened() else 0
        finally:
            capture.release()


class DisplaySink:
    """``--show``: a window with the annotated frames; q or Esc stops the run."""

    WINDOW = "PatchGuard-Edge"

    def __init__(self) -> None:
        cv2 = opencv()
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                     or os.environ.get("WAYLAND_DISPLAY")):
            raise PatchGuardError("--show needs a display, and this session has none (no $DISPLAY)")
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise PatchGuardError(
                "--show needs an OpenCV with GUI support (opencv-python, not -headless)") from None
        self.stopped = False

    def write(self, item: StreamItem) -> None:
        cv2 = opencv()
        cv2.imshow(self.WINDOW, draw_overlay(item.view, item.result))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stopped = True

    def close(self) -> None:
        opencv().destroyAllWindows()


@dataclass
class RunSummary:
    """Running totals for the end-of-run summary (frames, FPS, latencies, certified rate)."""

    frames: int = 0
    certified: int = 0
    alerts: int = 0
    abstained: int = 0
    latency_sums: dict[str, float] = field(default_factory=lambda: {"pre": 0.0, "infer": 0.0,
                                                                     "certify": 0.0})
    started: float = field(default_factory=time.perf_counter)
    ended: Optional[float] = None
    stop_reason: str = "end of source"
    notes: list[str] = field(default_factory=list)  # e.g. frames missing, rows written

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.certified += int(result.certified)
        self.alerts += int(getattr(result, "alert", False))
        self.abstained += int(getattr(result, "abstained", False))
        for key, value in result.latency_ms.items():
            self.latency_sums[key] = self.latency_sums.get(key, 0.0) + value

    def finish(self, reason: Optional[str] = None) -> None:
        self.ended = time.perf_counter()
        if reason:
            self.stop_reason = reason

    def to_dict(self) -> dict[str, Any]:
        elapsed = (self.ended or time.perf_counter()) - self.started
        n = max(self.frames, 1)
        return {
            "frames": self.frames,
            "seconds": round(elapsed, 3),
            "fps": round(self.frames / elapsed, 2) if elapsed > 0 else 0.0,
            "mean_latency_ms": {k: round(v / n, 3) for k, v in self.latency_sums.items()},
            "certified": self.certified,
            "certified_rate": round(self.certified / n, 4) if self.frames else 0.0,
            "alerts": self.alerts,
            "abstained": self.abstained,
            "stopped": self.stop_reason,
            "notes": list(self.notes),
        }

    def text(self) -> str:
        d = self.to_dict()
        lat = d["mean_latency_ms"]
        return (
            f"{d['frames']} frames in {d['seconds']:.1f} s ({d['fps']:.1f} FPS); mean latency "
            f"pre {lat['pre']:.2f} ms, infer {lat['infer']:.2f} ms, certify {lat['certify']:.2f} ms; "
            f"certified {d['certified']}/{d['frames']} ({100 * d['certified_rate']:.1f}%); "
            f"alerts {d['alerts']}, abstained {d['abstained']}; "
            f"stopped: {d['stopped']}" + "".join(f"; {note}" for note in d["notes"])
        )
