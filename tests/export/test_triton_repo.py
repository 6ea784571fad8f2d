"""pg-export --triton-repo: the repository's config.pbtxt files parse with Triton's own model-config
protobuf definitions (tritonclient's model_config_pb2) and tie together.

Not run against a full tritonserver here: PyTriton's bundled server has only
the Python backend (README, "Serving with Triton").
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from patchguard.export.triton_repo import BACKBONE, CERTIFY, ENSEMBLE, write_triton_repo
from patchguard.runtime.errors import PatchGuardError


def _parse(path: Path):  # type: ignore[no-untyped-def]
    text_format = pytest.importorskip("google.protobuf.text_format")
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                             reason="tritonclient ([serve] extra) ships Triton's model_config_pb2")
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def _check_repo(repo: Path, model: Path) -> None:
    import onnxruntime as ort

    from patchguard.runtime.footprint import camera_threat, patch_side
    from patchguard.runtime.pipeline import Pipeline
    from patchguard.runtime.preprocess import resize_plan

    configs = {name: _parse(repo / name / "config.pbtxt") for name in (BACKBONE, CERTIFY, ENSEMBLE)}
    backbone, certify, ensemble = configs[BACKBONE], configs[CERTIFY], configs[ENSEMBLE]
    assert backbone.backend == "onnxruntime" and certify.backend == "python" and ensemble.platform == "ensemble"
    assert (repo / BACKBONE / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert (repo / CERTIFY / "1" / "model.py").is_file()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    graph_in, graph_out = session.get_inputs()[0], session.get_outputs()[0]
    assert [i.name for i in backbone.input] == [graph_in.name]
    assert list(backbone.input[0].dims) == list(graph_in.shape[1:])
    assert [o.name for o in backbone.output] == [graph_out.name]
    assert list(backbone.output[0].dims) == list(graph_out.shape[1:])
    assert list(certify.input[0].dims) == list(backbone.output[0].dims)
    # The ensemble's steps name real tensors of real models, in order.
    first, second = ensemble.ensemble_scheduling.step
    assert first.model_name == BACKBONE and second.model_name == CERTIFY
    assert set(first.input_map) == {i.name for i in backbone.input}
    assert set(first.output_map) == {o.name for o in backbone.output}
    assert set(first.output_map.values()) == set(second.input_map.values())
    assert set(second.output_map) == {o.name for o in certify.output} == {o.name for o in ensemble.output}
    # The Python model certifies against Pipeline's threat model for a frame at model size.
    threat = json.loads((repo / CERTIFY / "1" / "threat.json").read_text())
    with Pipeline.from_engine(model) as pipeline:
        record = pipeline.record
        own = pipeline.threat(record.input_size)
    plan = resize_plan(record.input_size, record)
    assert own == camera_threat(plan, record, patch_side(plan, record, None, None))
    assert threat["window"] == list(own.window) and threat["sizes"] == list(own.sizes)
    assert threat["patch_windows"] == [list(w) for w in own.patch_windows]


def test_repository_configs_parse_and_tie_together(default_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    repo = write_triton_repo(default_onnx, tmp_path / "repo", max_batch=16)
    _check_repo(repo, default_onnx)
    assert all(_parse(repo / n / "config.pbtxt").max_batch_size == 16 for n in (BACKBONE, CERTIFY, ENSEMBLE))


def test_a_non_empty_folder_is_refused(default_onnx: Path, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "keep.txt").write_text("mine")
    with pytest.raises(PatchGuardError, match="not empty"):
        write_triton_repo(default_onnx, tmp_path / "repo")
    assert (tmp_path / "repo" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_pg_export_writes_the_repository(default_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, "-c", "from patchguard.export.cli import main; main()",
                           "--onnx", str(default_onnx), "--out", str(tmp_path / "out"), "--name", "m",
                           "--no-engine", "--triton-repo", str(tmp_path / "repo")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote Triton model repository" in done.stdout
    written = tmp_path / "out" / "m.onnx"
    _check_repo(tmp_path / "repo", written if written.is_file() else default_onnx)
