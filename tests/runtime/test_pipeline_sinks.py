"""Outputs of the pipeline: JSON lines flushed per frame, the overlay, the summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.pipeline import FrameResult, StreamItem
from patchguard.runtime.sinks import JsonlSink, RunSummary, VideoSink, draw_overlay

pytest.importorskip("cv2")


def _result(certified: bool, size: int, box=(2, 3, 12, 9)) -> FrameResult:
    return FrameResult(label=1, class_name="Trouser", certified=certified, certified_patch_px=size,
                       patch_px=8, window=(4, 4), masked_box=box, masked_class=1,
                       frame_size=(20, 30), latency_ms={"pre": 0.1, "infer": 0.2, "certify": 0.3})


def _item(i: int, result: FrameResult, frame: np.ndarray | None = None) -> StreamItem:
    frame = np.zeros((24, 32, 3), np.uint8) if frame is None else frame
    return StreamItem(i, "clip.avi", 1700000000.0 + i, frame, result)


def test_jsonl_rows_are_on_disk_before_close(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "out" / "rows.jsonl")
    for i in range(3):
        sink.write(_item(i, _result(i == 1, 8 * (i == 1))))
        # Flushed per frame: a reader following the file sees every row at once.
        rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
        assert len(rows) == i + 1
    sink.close()
    assert rows[1]["certified"] is True and rows[1]["masked_box"] == [2, 3, 12, 9]
    assert rows[0]["latency_ms"] == {"pre": 0.1, "infer": 0.2, "certify": 0.3}


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_overlay_draws_on_any_frame_layout(shape: tuple[int, ...]) -> None:
    frame = np.full(shape, 90, dtype=np.uint8)
    for result in (_result(True, 8), _result(False, 4), _result(False, 0, box=None)):
        canvas = draw_overlay(frame, result)
        assert canvas.shape == (20, 30, 3) and canvas.dtype == np.uint8
        assert not np.array_equal(canvas, np.full((20, 30, 3), 90, np.uint8))
    assert np.all(frame == 90)  # the caller's frame is left alone


def test_video_sink_refuses_unknown_suffix_and_writes_atomically(tmp_path: Path) -> None:
    with pytest.raises(PatchGuardError, match="use one of"):
        VideoSink(tmp_path / "out.gif", 10.0)
    sink = VideoSink(tmp_path / "out.avi", None)
    for _ in range(4):
        sink.write(_item(0, _result(True, 8)))
    assert not (tmp_path / "out.avi").exists()  # not in place until finished
    sink.close()
    assert (tmp_path / "out.avi").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.avi"]


def test_two_runs_saving_one_video_never_share_a_file(tmp_path: Path) -> None:
    """Two sinks on the same path (two pg-run started with the same --save-video) each
    write their own hidden file: the video in place is one run's whole, nothing is left
    behind, and a sink that got no frame leaves nothing and removes nothing."""
    import cv2

    target = tmp_path / "out.avi"
    first, second, idle = VideoSink(target, 10.0), VideoSink(target, 10.0), VideoSink(target, 10.0)
    for i in range(6):
        first.write(_item(i, _result(True, 8)))
        if i < 3:
            second.write(_item(i, _result(False, 0)))
    assert len(list(tmp_path.iterdir())) == 2  # two hidden files, nothing in place yet
    second.close()
    first.close()
    idle.close()
    assert [p.name for p in tmp_path.iterdir()] == ["out.avi"]
    capture = cv2.VideoCapture(str(target))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6  # the last to finish, whole
    capture.release()


def test_summary_with_and_without_frames() -> None:
    empty = RunSummary()
    empty.finish("error")
    assert "0 frames" in empty.text() and "stopped: error" in empty.text()
    summary = RunSummary()
    for i in range(4):
        summary.add(_result(i % 2 == 0, 8))
    summary.finish()
    data = summary.to_dict()
    assert data["frames"] == 4 and data["certified"] == 2 and data["certified_rate"] == 0.5
    assert data["mean_latency_ms"] == {"pre": 0.1, "infer": 0.2, "certify": 0.3}
