"""PatchCleanser in the runtime: Pipeline and pg-run on the bundled model exported by our exporter.

The pipeline's label is double masking on the preprocessed frame (the runner's own decision),
certificates follow --certify every|N|none, and the JSONL says the defense, the views scored
and whether the second round ran."""
from __future__ import annotations

import json
import shutil

import pytest
from _calibration_fixtures import SAMPLES
from _cleanser_fixtures import export_cleanser
from click.testing import CliRunner

from patchguard.runtime import PatchGuardError
from patchguard.runtime.cli.run import main as run_main
from patchguard.runtime.datasets import load_fashion_mnist
from patchguard.runtime.pipeline import Pipeline
from patchguard.runtime.preprocess import normalize
from patchguard.runtime.views import view_runner


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export_cleanser(tmp_path_factory.mktemp("cleanser_pipe"))


@pytest.mark.fashion_mnist
def test_pipeline_labels_are_double_masking_and_certify_follows_the_option(onnx_model):
    images, _ = load_fashion_mnist("test")
    frames = list(images[:12])
    with Pipeline.from_engine(onnx_model) as pipeline:
        results = pipeline.run_batch(frames)
        runner = view_runner(pipeline.record, (5, 5), pipeline.backend.infer)
        expected = runner.run(normalize(images[:12], pipeline.record), certify=True)
        assert [r.label for r in results] == [e.label for e in expected]
        assert [r.certified for r in results] == [e.certified for e in expected]
        assert all(r.defense == "cleanser" and r.window == (8, 8) for r in results)
        assert all(r.views["certified_checked"] for r in results)
        assert [r.views["scored"] for r in results] == [e.views for e in expected]
        assert any(r.certified for r in results)
        for r, e in zip(results, expected):
            assert r.certified_patch_px == (5 if r.certified else 0)
            assert r.views["second_round"] == e.details["second_round"]
            # A certified frame had a unanimous first round: no second round.
            assert not (r.certified and r.views["second_round"])
    with Pipeline.from_engine(onnx_model, certify=3) as every_third:
        got = [every_third(f) for f in frames[:7]]
        assert [r.views["certified_checked"] for r in got] == [True, False, False, True, False, False, True]
        assert [r.label for r in got] == [e.label for e in expected[:7]]
        assert not any(r.certified for r, c in zip(got, [1, 0, 0, 1, 0, 0, 1]) if not c)
    with Pipeline.from_engine(onnx_model, certify="none") as never:
        got = never.run_batch(frames)
        assert [r.label for r in got] == [e.label for e in expected]
        assert not any(r.certified or r.views["certified_checked"] for r in got)
        # Without certification a unanimous first round costs the 36 one-mask views only.
        assert min(r.views["scored"] for r in got) == 36


def test_bagnet_and_view_options_do_not_mix(onnx_model):
    from _export_fixtures import export_small

    with pytest.raises(PatchGuardError, match="apply to BagNets"):
        Pipeline.from_engine(onnx_model, top_k=3)
    with pytest.raises(PatchGuardError, match="--certify takes"):
        Pipeline.from_engine(onnx_model, certify="sometimes")
    small = export_small(onnx_model.parent)
    with pytest.raises(PatchGuardError, match="--certify applies to view defenses"):
        Pipeline.from_engine(small, certify="none")


@pytest.mark.fashion_mnist
def test_pg_run_jsonl_says_defense_views_and_second_round(onnx_model, tmp_path):
    samples = tmp_path / "frames"
    shutil.copytree(SAMPLES / "1-trouser", samples)
    out = tmp_path / "frames.jsonl"
    result = CliRunner().invoke(run_main, ["--engine", str(onnx_model), "--source", str(samples),
                                           "--jsonl", str(out), "--max-frames", "6", "--certify", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header, frames = lines[0], lines[1:]
    assert header["kind"] == "header" and header["defense"]["kind"] == "cleanser"
    assert header["defense"]["masks_per_axis"] == [6, 6] and header["settings"]["certify"] == "2"
    assert len(frames) == 6
    for index, frame in enumerate(frames):
        assert frame["defense"] == "cleanser" and frame["window"] == [8, 8]
        assert frame["views"]["certified_checked"] == (index % 2 == 0)
        assert isinstance(frame["views"]["second_round"], bool) and frame["views"]["scored"] >= 36
    assert sum(frame["label"] == 1 for frame in frames) >= 5
    try:
        import jsonschema
    except ImportError:
        return
    from patchguard.runtime.resultstream import load_schema

    check = jsonschema.Draft202012Validator(load_schema())
    for line in lines:
        check.validate(line)
