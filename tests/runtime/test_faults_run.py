"""pg-run under faults: outputs that are inputs, full disks, kills, lost sources, bad images.

Every case checks the exit code of the contract (``ExitCode``), the one
``Error:`` line, and what is on disk afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from _pipeline_fixtures import write_video
from click.testing import CliRunner

from patchguard.runtime.cli.run import main
from patchguard.runtime.errors import ExitCode

cv2 = pytest.importorskip("cv2")
TOOLS = Path(__file__).resolve().parents[2] / "tools"
CODE = "import sys; from patchguard.runtime.cli.run import main; sys.exit(main())"


def pg_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          timeout=300)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def frame_rows(path: Path) -> list[dict]:
    """The per-frame rows (header lines left out), every line parsed."""
    return [row for row in parse_all(path) if row.get("kind") != "header"]


def parse_all(path: Path) -> list[dict]:
    """Every line of a JSONL file parsed; a cut-off line fails here."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 frames of random 64x64 images: long enough to be killed in the middle of."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for _ in range(30)]
    return write_video(tmp_path_factory.mktemp("long") / "long.avi", frames * 100)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    return path


def test_help_states_the_exit_code_contract() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    for code in ExitCode:
        if code is not ExitCode.CERTIFICATE_BROKEN:
            assert str(int(code)) in text, code
    assert "source was lost" in text and "SIGTERM" in text and "--append" in text


def test_an_output_that_is_an_input_is_refused(default_onnx: Path, image: Path, long_video: Path,
                                               tmp_path: Path) -> None:
    before = image.read_bytes()
    video_before = long_video.stat().st_size
    link = tmp_path / "link.png"
    link.symlink_to(image)
    cases = [("--source", str(image), "--jsonl", str(image)),
             ("--source", str(image), "--jsonl", str(link)),
             ("--source", str(long_video), "--jsonl", str(long_video)),
             ("--source", str(long_video), "--save-video", str(long_video)),
             ("--source", str(image), "--jsonl", str(default_onnx)),
             ("--source", str(image), "--jsonl", str(tmp_path / "x.avi"), "--save-video",
              str(tmp_path / "x.avi"))]
    for args in cases:
        done = pg_run("--engine", str(default_onnx), *args)
        assert done.returncode == ExitCode.USAGE, (args, done.stderr)
        assert len(error_lines(done.stderr)) == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert image.read_bytes() == before and long_video.stat().st_size == video_before
    assert not (tmp_path / "x.avi").exists()


def test_a_folder_or_file_clash_is_refused(default_onnx: Path, image: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for out in (str(tmp_path), str(tmp_path / "afile" / "rows.jsonl")):
        done = pg_run("--engine", str(default_onnx), "--source", str(image), "--jsonl", out)
        assert done.returncode == ExitCode.USAGE and len(error_lines(done.stderr)) == 1, done.stderr


def test_a_failed_run_leaves_an_earlier_jsonl_alone(default_onnx: Path, tmp_path: Path) -> None:
    earlier = tmp_path / "rows.jsonl"
    earlier.write_text('{"frame": 0}\n')
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    done = pg_run("--engine", str(default_onnx), "--source", str(bad), "--jsonl", str(earlier))
    assert done.returncode == ExitCode.USAGE and len(error_lines(done.stderr)) == 1
    assert earlier.read_text() == '{"frame": 0}\n'
    # No output file is created before the first result exists.
    fresh = tmp_path / "new" / "rows.jsonl"
    pg_run("--engine", str(default_onnx), "--source", str(bad), "--jsonl", str(fresh))
    assert not fresh.parent.exists()


def test_append_keeps_the_earlier_rows(default_onnx: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    for _ in range(2):
        assert pg_run("--engine", str(default_onnx), "--source", str(image), "--jsonl", str(out),
                      "--append").returncode == 0
    assert len(frame_rows(out)) == 2 and len(parse_all(out)) == 4  # a header per run
    done = pg_run("--engine", str(default_onnx), "--source", str(image), "--jsonl", str(out))
    assert done.returncode == 0 and len(frame_rows(out)) == 1  # without --append: replaced
    out.write_bytes(b'{"frame": 0}')  # no final newline: appending would glue two rows
    done = pg_run("--engine", str(default_onnx), "--source", str(image), "--jsonl", str(out),
                  "--append")
    assert done.returncode == ExitCode.OUTPUT_FAILED and len(error_lines(done.stderr)) == 1
    assert out.read_bytes() == b'{"frame": 0}'


def test_dev_full_is_exit_4_with_one_line(default_onnx: Path, image: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    done = pg_run("--engine", str(default_onnx), "--source", str(image), "--jsonl", "/dev/full")
    assert done.returncode == ExitCode.OUTPUT_FAILED, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "No space left" in lines[0]
    assert "0 rows written" in done.stderr  # the summary still comes


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (needs root; skipped with the reason elsewhere)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs."""
    with _tmpfs(tmp_path / "small", "16k") as mount:
        yield mount


@pytest.fixture()
def video_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a few dozen frames of video fit."""
    with _tmpfs(tmp_path / "video", "256k") as mount:
        yield mount


def test_disk_full_cuts_back_to_whole_lines(default_onnx: Path, long_video: Path,
                                            small_tmpfs: Path) -> None:
    out = small_tmpfs / "rows.jsonl"
    done = pg_run("--engine", str(default_onnx), "--source", str(long_video), "--jsonl", str(out),
                  "--max-frames", "400")
    assert done.returncode == ExitCode.OUTPUT_FAILED, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "No space left" in lines[0] and "cut back" in lines[0]
    rows = frame_rows(out)
    assert 0 < len(rows) < 400 and [r["frame"] for r in rows] == list(range(len(rows)))
    assert f"{len(rows)} rows written" in done.stderr
    assert "an output could not be written" in done.stderr


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_disk_full_under_save_video_stops_and_keeps_no_part(default_onnx: Path, long_video: Path,
                                                            video_tmpfs: Path, tmp_path: Path,
                                                            suffix: str) -> None:
    """OpenCV's writer says nothing when the disk fills: the run stops with exit 4 and one
    line naming the video, its hidden temporary file is gone, an earlier file at its path
    is untouched, and the JSONL (on another disk) holds every frame of the run."""
    video, rows_file = video_tmpfs / f"out{suffix}", tmp_path / "rows.jsonl"
    video.write_bytes(b"an earlier video")
    done = pg_run("--engine", str(default_onnx), "--source", str(long_video), "--save-video", str(video),
                  "--jsonl", str(rows_file), "--max-frames", "400")
    assert done.returncode == ExitCode.OUTPUT_FAILED, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and str(video) in lines[0] and "no space left" in lines[0], lines
    assert video.read_bytes() == b"an earlier video" and [p.name for p in video_tmpfs.iterdir()] == [video.name]
    rows = frame_rows(rows_file)
    assert 0 < len(rows) < 400 and f"{len(rows)} rows written" in done.stderr
    assert "an output could not be written" in done.stderr


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_a_video_whose_end_no_longer_fits_is_not_kept(video_tmpfs: Path, suffix: str) -> None:
    """The disk fills between the last frame and close (another writer took it): the
    finished file lacks its index / trailer, so it is removed, not renamed into place."""
    from patchguard.runtime.errors import OutputError
    from patchguard.runtime.pipeline import FrameResult, StreamItem
    from patchguard.runtime.sinks import VideoSink

    result = FrameResult(label=1, class_name="Trouser", certified=True, certified_patch_px=8, patch_px=8,
                         window=(4, 4), masked_box=None, masked_class=1, frame_size=(64, 64), latency_ms={})
    rng = np.random.default_rng(0)
    sink = VideoSink(video_tmpfs / f"out{suffix}", 30.0)
    for i in range(3):
        sink.write(StreamItem(i, "noise", 0.0, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), result))
    stat = os.statvfs(video_tmpfs)
    (video_tmpfs / "filler").write_bytes(bytes(stat.f_frsize * stat.f_bfree))
    with pytest.raises(OutputError, match="no space left on device for its end: the finished file holds"):
        sink.close()
    assert [p.name for p in video_tmpfs.iterdir()] == ["filler"]


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"random" * 50])
def test_a_single_unreadable_image_is_exit_1(default_onnx: Path, tmp_path: Path,
                                             content: bytes) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    done = pg_run("--engine", str(default_onnx), "--source", str(bad))
    assert done.returncode == ExitCode.USAGE
    assert len(error_lines(done.stderr)) == 1 and len(done.stderr.splitlines()) == 1


def test_a_truncated_png_and_a_folder_of_unreadable_images(default_onnx: Path, image: Path,
                                                           tmp_path: Path) -> None:
    data = image.read_bytes()
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "half.png").write_bytes(data[: len(data) // 2])
    (folder / "zero.png").write_bytes(b"")
    done = pg_run("--engine", str(default_onnx), "--source", str(folder / "half.png"))
    assert done.returncode == ExitCode.USAGE and len(error_lines(done.stderr)) == 1
    done = pg_run("--engine", str(default_onnx), "--source", str(folder))
    assert done.returncode == ExitCode.USAGE and len(error_lines(done.stderr)) == 1
    assert "none of its 2 image files" in done.stderr


def test_an_image_bomb_is_refused_before_decoding(default_onnx: Path, tmp_path: Path) -> None:
    """A PNG whose header claims 60000 x 60000 pixels: one line, no 10 GB allocation."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 60001 * 4)) + chunk(b"IEND", b""))
    done = pg_run("--engine", str(default_onnx), "--source", str(bomb))
    assert done.returncode == ExitCode.USAGE and len(error_lines(done.stderr)) == 1, done.stderr
    assert "pixels" in done.stderr


def test_empty_source_is_not_the_current_folder(default_onnx: Path) -> None:
    done = pg_run("--engine", str(default_onnx), "--source", "")
    assert done.returncode == ExitCode.USAGE and "empty" in error_lines(done.stderr)[0]


def _start(default_onnx: Path, video: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CODE, "--engine", str(default_onnx), "--source",
                             str(video), "--jsonl", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # As a foreground process: a background job inherits SIGINT ignored.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509 (no threads here)


def _wait_for_rows(proc: subprocess.Popen, out: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 0:
            return
        time.sleep(0.05)
    raise AssertionError("pg-run wrote no row in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, ExitCode.TERMINATED),
                                       (signal.SIGINT, ExitCode.INTERRUPTED)])
def test_sigterm_and_sigint_finish_cleanly(default_onnx: Path, long_video: Path, tmp_path: Path,
                                           sig: int, code: int) -> None:
    out, saved = tmp_path / "rows.jsonl", tmp_path / "annotated.avi"
    proc = _start(default_onnx, long_video, out, "--save-video", str(saved))
    _wait_for_rows(proc, out)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    rows = frame_rows(out)
    assert f"{len(rows)} frames" in stderr and "SIG" in stderr  # the summary came
    # The video is finalised under its name, readable, with every frame; no hidden part file.
    capture = cv2.VideoCapture(str(saved))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == len(rows)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_kills_at_random_instants_leave_whole_lines(default_onnx: Path) -> None:
    """SIGKILL / SIGTERM at random instants: every line parses (the full drill: 50 kills)."""
    done = subprocess.run([sys.executable, str(TOOLS / "fault_drills.py"), "run", "--rounds", "6",
                           "--engine", str(default_onnx)], capture_output=True, text=True, timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["violations"] == 0 and summary["files"] == 6
    assert summary["exit_codes"]["SIGTERM"] == {"143": 3}
