"""pg-bench: runs on a real exported model and on synthetic maps, reports every stage."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from _pipeline_fixtures import default_onnx  # noqa: F401 (fixture)
from patchguard.runtime.cli.bench import main

STAGES = {"preprocess", "masking", "certificate", "certified_patch_size", "certify_stage"}


def test_bench_on_an_exported_model(default_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--batch", "2",
                                       "--iterations", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["ms_per_batch"]) == STAGES | {"inference"}
    assert report["batch"] == 2 and report["frame"] == [640, 480]
    assert 0.0 < report["certify_share"] < 1.0
    assert "certification share" in result.output


def test_bench_synthetic_maps_skip_inference(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--synthetic-map", "26x26x10", "--iterations", "2",
                                       "--frame", "320x240", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["ms_per_batch"]) == STAGES
    assert report["map"] == [26, 26, 10]
    assert report["overhead_ms_per_frame"] > 0


def test_bench_needs_exactly_one_model() -> None:
    runner = CliRunner()
    for args in ([], ["--engine", "m.onnx", "--synthetic-map", "2x2x2"], ["--synthetic-map", "26x26"]):
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and "Error" in result.output
    assert "pg-bench --engine" in runner.invoke(main, ["--help"]).output
