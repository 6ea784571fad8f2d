"""Training for feature-space double masking: the worst mask pair's scores
(checked against a naive loop over pairs) and a pg-train --defense double run."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from _feature_fixtures import naive_masks
from click.testing import CliRunner

from patchguard.models.cli import train_main
from patchguard.models.reference import double_masked_training_logits


def test_training_logits_are_the_worst_pair_of_masks() -> None:
    rng = np.random.default_rng(150)
    u = rng.normal(size=(6, 9, 8, 4))
    y = rng.integers(0, 4, size=6)
    got = double_masked_training_logits(torch.from_numpy(u), torch.from_numpy(y), (2, 3), 3).numpy()
    masks = naive_masks(9, 8, 2, 3, 3)
    v = np.maximum(u, 0.0)
    for n in range(6):
        worst, best = None, np.inf
        for mi, mj in itertools.product(masks, masks):
            scores = v[n][~(mi | mj)].sum(axis=0) / 72
            margin = scores[y[n]] - np.delete(scores, y[n]).max()
            if margin < best:
                worst, best = scores, margin
        assert np.allclose(got[n], worst)


@pytest.mark.fashion_mnist
def test_pg_train_defense_double_smoke(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(train_main, [
        "--data", "fashion-mnist", "--limit", "256", "--eval-limit", "64", "--batch-size", "128",
        "--epochs", "1", "--defense", "double", "--masks-per-axis", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= line["double_accuracy"] <= 1.0 and 0.0 <= line["certified"] <= 1.0
    bad = CliRunner().invoke(train_main, ["--out", str(tmp_path / "x"), "--masks-per-axis", "0"])
    assert bad.exit_code != 0 and "--masks-per-axis" in bad.output
