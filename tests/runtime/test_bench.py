"""pg-bench: runs on a real exported model and on synthetic maps, reports every stage."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from patchguard.runtime.cli.bench import main

STAGES = {"preprocess", "masking", "certificate", "certified_patch_size", "certify_stage", "readouts"}


def test_bench_on_an_exported_model(default_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--batch", "2",
                                       "--iterations", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["ms_per_batch"]) == STAGES | {"inference"}
    assert report["batch"] == 2 and report["frame_size"] == [480, 640] and report["frame"] == [640, 480]
    assert 0.0 < report["certify_share"] < 1.0
    assert "certification share" in result.output


def test_bench_synthetic_maps_skip_inference(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--synthetic-map", "26x26x10", "--iterations", "2",
                                       "--frame-size", "240x320", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["frame_size"] == [240, 320] and report["frame"] == [320, 240]  # HxW, and the older WxH field
    assert set(report["ms_per_batch"]) == STAGES
    assert report["map"] == [26, 26, 10]
    assert report["overhead_ms_per_frame"] > 0


def test_bench_times_double_masking_and_top_k(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--synthetic-map", "12x12x5", "--iterations", "2", "--frame",
                                       "64x48", "--defense", "double", "--top-k", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["defense"] == "double" and report["top_k"] == 2 and "readouts" not in report["ms_per_batch"]
    assert report["frame_size"] == [48, 64]  # --frame is the older, width-first spelling of --frame-size
    assert "double, alert, top-2" in result.output
    bad = CliRunner().invoke(main, ["--synthetic-map", "12x12x5", "--top-k", "0"])
    assert bad.exit_code != 0 and "top_k" in bad.output


def test_bench_needs_exactly_one_model() -> None:
    runner = CliRunner()
    for args in ([], ["--engine", "m.onnx", "--synthetic-map", "2x2x2"], ["--synthetic-map", "26x26"]):
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and "Error" in result.output
    assert "pg-bench --model" in runner.invoke(main, ["--help"]).output


def test_bench_percentiles_on_real_frames_of_a_folder(default_onnx: Path, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    folder = tmp_path / "shots"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(folder),
                                       "--threads", "1", "--batch", "2", "--budget-ms", "1000",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # 9 frames in batches of 2: the first 2 batches (4 frames) warm up, 5 are timed.
    assert report["frames"] == 5 and report["warmup_frames"] == 4 and report["threads"] == 1
    for stage in ("pre", "infer", "certify", "frame"):
        s = report["ms_per_frame"][stage]
        assert set(s) == {"mean", "p50", "p95", "p99", "max", "n"} and s["n"] == 5
        assert 0 <= s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert "p99" in result.output and "budget 1000.0 ms/frame" in result.output and "fits" in result.output
    # --json - prints the report alone, for scripts.
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(folder), "--json", "-"])
    assert json.loads(result.output)["source"] == str(folder)


def test_bench_stage_percentiles_and_bad_options(default_onnx: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--synthetic-map", "8x8x3", "--frame", "64x64", "--iterations", "2",
                                  "--json", "-"])
    stats = json.loads(result.output)["percentiles_ms_per_batch"]["certify_stage"]
    assert stats["p50"] <= stats["p99"] <= stats["max"]
    for args, message in ((["--threads", "0"], "--threads"), (["--budget-ms", "0"], "--budget-ms"),
                          (["--source", "nowhere/"], "nowhere")):
        result = runner.invoke(main, ["--engine", str(default_onnx), *args])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["--synthetic-map", "8x8x3", "--source", "x/"])
    assert result.exit_code == 1 and "--source needs --model" in result.output


def test_bench_source_options_apply_to_source_only() -> None:
    result = CliRunner().invoke(main, ["--synthetic-map", "8x8x3", "--color", "rgb"])
    assert result.exit_code == 1 and "apply to --source" in result.output
