"""Cameras: index / device / by-id parsing, one-line errors, latest-frame reading,
reconnect with back-off. No camera exists here: a video file opened by the same
OpenCV capture class stands in for the device (it "drops" when it ends), and for
pg-run a named pipe fed with a clip (a video *file* given to --camera is a recording)."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from patchguard.runtime import camera as camera_module
from patchguard.runtime.camera import CameraStream, open_camera, parse_camera
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.sources import open_source

cv2 = pytest.importorskip("cv2")


def _video(path: Path, count: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 24))
    for i in range(count):
        writer.write(np.full((24, 32, 3), 4 * i, np.uint8))
    writer.release()
    return path


def _opener(path: Path, opens: list[int], fail_after: int = 10**9):
    def open_() -> object:
        opens.append(1)
        if len(opens) > fail_after:
            return None  # the device is gone for good
        capture = cv2.VideoCapture(str(path))
        return capture if capture.isOpened() else None
    return open_


def test_camera_argument_forms(tmp_path: Path) -> None:
    assert parse_camera("0") == (0, "camera 0") and parse_camera(2) == (2, "camera 2")
    # A udev-style link to a device node resolves to the node's index.
    node = tmp_path / "video7"
    node.write_bytes(b"")
    link = tmp_path / "usb-Logitech_C920-video-index0"
    link.symlink_to(node)
    target, description = parse_camera(str(link))
    assert target == 7 and str(link) in description and str(node) in description
    with pytest.raises(PatchGuardError, match="does not exist .*cameras here") as info:
        parse_camera("/dev/v4l/by-id/usb-nothing-video-index0")
    assert "\n" not in str(info.value)


def test_source_that_is_a_camera_points_to_camera() -> None:
    for text in ("0", "/dev/video0", "/dev/v4l/by-id/usb-x-video-index0"):
        with pytest.raises(PatchGuardError, match=f"use --camera {text}"):
            open_source(text)


def test_every_frame_in_order_then_lost_without_reconnect(tmp_path: Path) -> None:
    video, opens = _video(tmp_path / "cam.avi", 12), []
    with CameraStream(_opener(video, opens), "camera test", latest=False) as cam:
        frames = list(cam)
    assert [f.index for f in frames] == list(range(12)) and len(opens) == 1
    assert all(f.stamp_ns and f.capture_time > 1.6e9 for f in frames)  # grab time, Unix seconds
    assert cam.lost and "after 12" in cam.lost and "--reconnect" in cam.lost


def test_reconnect_with_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float] = []
    monkeypatch.setattr(camera_module.time, "sleep", waits.append)  # the waits, not the wall clock
    video, opens = _video(tmp_path / "cam.avi", 5), []
    # The device comes back twice, then is gone: 5 + 5 + 5 frames, then 3 failed tries.
    with CameraStream(_opener(video, opens, fail_after=3), "camera test", reconnect=3,
                      latest=False) as cam, caplog.at_level(logging.WARNING):
        frames = list(cam)
    assert len(frames) == 15 and [f.index for f in frames] == list(range(15))
    assert cam.reconnects == 2
    # Each outage starts the back-off afresh: 0.5 s (ok), 0.5 s (ok), then 0.5, 1, 2 s (all fail).
    assert waits == [0.5, 0.5, 0.5, 1.0, 2.0]
    assert cam.lost and "3 reconnect tries failed" in cam.lost
    assert sum("reconnecting" in r.getMessage() for r in caplog.records) == 5


def test_latest_frame_mode_skips_a_backlog(tmp_path: Path) -> None:
    video, opens = _video(tmp_path / "cam.avi", 60), []
    with CameraStream(_opener(video, opens), "camera test", latest=True) as cam:
        seen = []
        for frame in cam:
            seen.append(int(frame.image[0, 0, 0]))
            time.sleep(0.01)  # a slow model: the file is read far faster than this
    # Frames come out in capture order, never twice; the ones the run was too slow for are dropped.
    assert seen == sorted(set(seen)) and len(seen) + cam.dropped <= 60
    assert cam.lost is not None


def test_missing_camera_and_camera_only_options_are_one_line(tmp_path: Path) -> None:
    from patchguard.runtime.cli.run import main

    with pytest.raises(PatchGuardError, match="camera 9 cannot be opened"):
        open_camera(9)
    with pytest.raises(PatchGuardError, match="--camera-fps must be positive"):
        open_camera(0, fps=0)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    result = CliRunner().invoke(main, ["--engine", str(model), "--source", str(tmp_path),
                                       "--reconnect", "2"])
    assert result.exit_code != 0 and "apply to --camera" in result.output


def _fifo_camera(tmp_path: Path, video: Path) -> Path:
    """A named pipe fed once with ``video``'s bytes: a live stream (not a file) that
    stops delivering when its writer is done, as an unplugged camera does."""
    fifo = tmp_path / "cam.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as pipe:  # blocks until pg-run opens the other end
            pipe.write(video.read_bytes())

    threading.Thread(target=feed, daemon=True).start()
    return fifo


def test_pg_run_on_a_camera_that_stops_exits_3(default_onnx: Path, tmp_path: Path) -> None:
    """End to end through pg-run: a live 'camera' (a pipe fed with a clip) that stops
    delivering is a lost source (exit 3), with every row kept."""
    from patchguard.runtime.cli.run import main

    camera = _fifo_camera(tmp_path, _video(tmp_path / "cam.avi", 8))
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--camera", str(camera),
                                       "--jsonl", str(out)])
    assert result.exit_code == 3, result.output
    assert "stopped delivering frames" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["kind"] == "header" and rows[0]["settings"]["camera"] == str(camera)
    assert len(rows) > 1 and all(r["capture_time"] is not None for r in rows[1:])


def test_pg_run_on_a_video_file_as_camera_ends_at_its_end(default_onnx: Path, tmp_path: Path) -> None:
    """A recording given to --camera is read like --source, every frame once: its end is
    no outage, so --reconnect does not reopen it (it used to replay it forever; --max-frames
    bounds the run if that comes back)."""
    from patchguard.runtime.cli.run import main

    video, out = _video(tmp_path / "cam.avi", 8), tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--camera", str(video),
                                       "--reconnect", "2", "--max-frames", "40", "--jsonl", str(out)])
    assert result.exit_code == 0, result.output
    assert "is a file, not a device" in result.output and "--reconnect does not apply" in result.output
    assert "reconnecting" not in result.output and "end of source" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in rows[1:]] == list(range(8))
    with pytest.raises(PatchGuardError, match="--reconnect must be 0 or more"):
        open_camera(str(video), reconnect=-1)
