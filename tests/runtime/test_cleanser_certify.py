"""pg-certify on the bundled PatchCleanser model: the report's figures equal an independent
recomputation from the dumped two-mask prediction tables, and the early-exit run agrees."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _cleanser_fixtures import export_cleanser, naive_double_masking
from click.testing import CliRunner

from patchguard.runtime.cli.certify import main as certify_main


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export_cleanser(tmp_path_factory.mktemp("cleanser"))


@pytest.mark.fashion_mnist
def test_certified_accuracy_recomputed_from_the_dump(onnx_model, tmp_path):
    args = ["--engine", str(onnx_model), "--data", "fashion-mnist", "--limit", "48", "--patch-size", "3,5"]
    full = CliRunner().invoke(certify_main, [*args, "--dump", str(tmp_path / "t.npz"),
                                             "--json", str(tmp_path / "full.json")])
    assert full.exit_code == 0, full.output
    quick = CliRunner().invoke(certify_main, [*args, "--json", str(tmp_path / "quick.json")])
    assert quick.exit_code == 0, quick.output
    report = json.loads((tmp_path / "full.json").read_text())
    early = json.loads((tmp_path / "quick.json").read_text())
    dump = np.load(tmp_path / "t.npz")
    labels = dump["labels"]
    assert len(labels) == 48
    for row, quick_row in zip(report["results"], early["results"]):
        tables = dump[f"tables_{row['patch_size']}"]
        assert tables.shape == (48, 36, 36) and (tables == tables.transpose(0, 2, 1)).all()
        predictions = np.array([naive_double_masking(t, 10) for t in tables])
        upper = np.triu_indices(36)
        certified = np.array([(t[upper] == y).all() for t, y in zip(tables, labels)])
        assert row["accuracy"] == pytest.approx(np.mean(predictions == labels), abs=0)
        assert row["certified"] == pytest.approx(certified.mean(), abs=0)
        assert row["views_per_image"] == 666
        # Early exit scores fewer views and reaches the same figures.
        assert (quick_row["accuracy"], quick_row["certified"]) == (row["accuracy"], row["certified"])
        assert quick_row["views_per_image"] < 666
    assert 0 < report["results"][-1]["certified"] <= report["results"][-1]["accuracy"]


def test_dump_belongs_to_view_defenses(tmp_path):
    from _export_fixtures import export_small

    small = export_small(tmp_path)
    result = CliRunner().invoke(certify_main, ["--engine", str(small), "--data", "fashion-mnist", "--limit", "2",
                                               "--patch-size", "5", "--dump", str(tmp_path / "d.npz")])
    assert result.exit_code == 1 and "--dump applies to view defenses" in result.output
