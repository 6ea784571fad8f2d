"""pg-run end to end, as a user runs it: a real model, videos, folders, bad inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from patchguard.runtime.cli.run import main

cv2 = pytest.importorskip("cv2")
KEYS = {"frame", "source", "time", "label", "class_name", "certified", "certified_patch_px",
        "masked_box", "latency_ms"}


def pg_run(*args: str) -> subprocess.CompletedProcess:
    """pg-run in a fresh process, so stderr is exactly what a user sees."""
    code = "import sys; from patchguard.runtime.cli.run import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)


def _rows(path: Path) -> list[dict]:
    """The frame lines (every line must parse; the first is the stream's header)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == "header"
    return lines[1:]


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "pg-run --model" in result.output


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_video_gives_one_row_per_frame_and_a_summary(default_onnx: Path, fashion_video,
                                                     tmp_path: Path) -> None:
    video, _ = fashion_video
    out, saved = tmp_path / "frames.jsonl", tmp_path / "annotated.avi"
    done = pg_run("--engine", str(default_onnx), "--source", str(video), "--jsonl", str(out),
                  "--save-video", str(saved))
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert len(rows) == 120 and [r["frame"] for r in rows] == list(range(120))
    for row in rows:
        assert set(row) >= KEYS
        assert set(row["latency_ms"]) == {"pre", "infer", "certify"}
        assert row["class_name"] and row["source"] == str(video)
    assert "120 frames" in done.stderr and "FPS" in done.stderr and "certified" in done.stderr
    # The annotated video is complete and readable, the temporary file gone.
    capture = cv2.VideoCapture(str(saved))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 120
    assert not list(tmp_path.glob(".*part*"))


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_jsonl_to_stdout_and_max_frames(default_onnx: Path, fashion_video) -> None:
    video, _ = fashion_video
    done = pg_run("--engine", str(default_onnx), "--source", str(video), "--jsonl", "-",
                  "--max-frames", "7", "--patch-frac", "0.02")
    assert done.returncode == 0, done.stderr
    header, *rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert header["kind"] == "header"
    assert len(rows) == 7 and all(set(r) >= KEYS for r in rows)
    assert rows[0]["patch_px"] == int(np.ceil(np.sqrt(0.02 * 112 * 112)))
    assert "max-frames" in done.stderr


@pytest.mark.slow
def test_folder_with_a_corrupt_png_and_a_text_file(default_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        cv2.imwrite(str(folder / f"shot{i:02d}.png"),
                    rng.integers(0, 256, size=(60 + i, 80, 3), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    (folder / "readme.txt").write_text("hello\n")
    out = tmp_path / "rows.jsonl"
    done = pg_run("--engine", str(default_onnx), "--source", str(folder), "--jsonl", str(out))
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert len(rows) == 10 and all(isinstance(r["label"], int) and r["class_name"] for r in rows)
    warnings = [line for line in done.stderr.splitlines() if "broken.png" in line]
    assert len(warnings) == 1
    # Nothing else on stderr but the warning and the summary line.
    assert len(done.stderr.strip().splitlines()) == 2, done.stderr


@pytest.mark.slow
def test_missing_camera_is_one_line(default_onnx: Path) -> None:
    done = pg_run("--engine", str(default_onnx), "--camera", "7")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "camera 7" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".onnx", ".plan"])
def test_random_bytes_model_is_one_line(tmp_path: Path, suffix: str) -> None:
    model = tmp_path / f"random{suffix}"
    model.write_bytes(os.urandom(2048))
    done = pg_run("--engine", str(model), "--source", str(tmp_path))
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_truncated_video_prints_the_summary_and_valid_jsonl(default_onnx: Path, fashion_video,
                                                            tmp_path: Path) -> None:
    video, _ = fashion_video
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "cut.jsonl"
    done = pg_run("--engine", str(default_onnx), "--source", str(cut), "--jsonl", str(out))
    assert done.returncode == 3, done.stderr  # the exit-code contract: the source ended early
    rows = _rows(out)  # every line parses
    assert 0 < len(rows) < 120
    assert f"{len(rows)} frames" in done.stderr
    assert f"only {len(rows)} of the 120 frames could be decoded" in done.stderr


@pytest.mark.slow
def test_show_without_a_display_is_one_line(default_onnx: Path, tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 30, 3), np.uint8))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    code = "import sys; from patchguard.runtime.cli.run import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "--engine", str(default_onnx), "--source",
                           str(tmp_path), "--show"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode != 0 and "display" in done.stderr and "Traceback" not in done.stderr


def test_bad_options_are_one_line(default_onnx: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["--engine", str(default_onnx)],
                 ["--engine", str(default_onnx), "--camera", "0", "--source", "x"],
                 ["--engine", str(default_onnx), "--source", str(tmp_path), "--max-frames", "0"],
                 ["--engine", str(tmp_path / "missing.onnx"), "--source", str(tmp_path)],
                 ["--engine", str(default_onnx), "--source", str(tmp_path), "--camera-frame-size", "720x1280"],
                 ["--engine", str(default_onnx), "--camera", "0", "--camera-frame-size", "720x1280",
                  "--camera-size", "1280x720"]):
        result = runner.invoke(main, args)
        # A clean click exit (no exception escaped) with a non-zero status and one message.
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit), args
        assert "Error" in result.output and "Traceback" not in result.output, args
