"""Export of an ordinary classifier for a view defense: ONNX with logits (B, K) and the defense
in its record, no locality probe, a parity report computed through the views, and the runtime's
backend scoring a frame's views in one batch."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _export_fixtures import run_cli

from patchguard.runtime.backends import open_backend
from patchguard.runtime.views import masked_views, score_views, view_labels, view_runner


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn")
    result = run_cli(["--arch", "cnn", "--random-init", "--out", str(out), "--name", "cnn",
                      "--fp16", "--no-engine", "--parity-n", "3"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_export_writes_logits_and_the_defense_without_a_probe(exported):
    out, text = exported
    import onnx

    model = onnx.load(str(out / "cnn.onnx"))
    assert [o.name for o in model.graph.output] == ["logits"]
    record = json.loads({p.key: p.value for p in model.metadata_props}["patchguard"])
    assert record["defense"]["kind"] == "cleanser" and record["receptive_field"] == 0
    assert "no locality probe" in text
    report = json.loads((out / "cnn.parity.json").read_text())
    assert report["defense"]["views"] == 666
    assert [row["artifact"] for row in report["rows"]] == ["cnn.onnx", "cnn.fp16.onnx"]
    fp32 = report["rows"][0]
    assert fp32["within_tolerance"] and fp32["prediction_agreement"] == 1.0
    assert fp32["certificate_agreement"] == 1.0


def test_backend_scores_a_frames_views_in_one_batch(exported):
    out, _ = exported
    rng = np.random.default_rng(0)
    with open_backend(out / "cnn.onnx") as backend:
        record = backend.record
        assert record.output_shape == (10,)
        x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
        runner = view_runner(record, (5, 5), backend.infer)
        views = runner.all_views(x[:1])
        assert views.shape == (666, 1, 28, 28)
        logits = score_views(backend.infer, views, max_batch=100)
        assert logits.shape == (666, 10)
        np.testing.assert_allclose(logits, backend.infer(views), rtol=1e-5, atol=1e-5)
        # The deployed path (early exit, second round) decides as the full table does.
        results = runner.run(x, certify=True)
        labels, certified = runner.from_logits(
            np.stack([score_views(backend.infer, runner.all_views(x[i:i + 1])) for i in range(2)]))
        assert [r.label for r in results] == list(labels)
        assert [r.certified for r in results] == list(certified)
        # A view is its frame with the masked pixels at the fill value.
        one = masked_views(x[:1], runner.masks.keep[:1], 0.0)[0, 0]
        assert (one[:8, :8] == 0).all() and (one[8:, 8:] == x[0, 0, 8:, 8:]).all()
        assert view_labels(np.array([[1.0, 1.0], [np.nan, 0.0]])).tolist() == [0, -1]


def test_wrong_input_channels_are_refused(exported):
    out, _ = exported
    from patchguard.runtime import PatchGuardError

    with open_backend(out / "cnn.onnx") as backend, pytest.raises(PatchGuardError, match="takes batches"):
        backend.infer(np.zeros((1, 3, 28, 28), np.float32))
