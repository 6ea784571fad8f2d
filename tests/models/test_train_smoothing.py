"""pg-train --defense ds / crops: an ordinary CNN on one random band / crop per image (DS's recipe)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchguard.models import load_checkpoint
from patchguard.models.cli import train_main
from patchguard.models.data import load_training_data
from patchguard.models.registry import cnn_record
from patchguard.models.smoothing import view_augment
from patchguard.models.train import TrainConfig
from patchguard.models.train_views import train_classifier
from patchguard.runtime.ablation import band_keep, crop_keep, encode, unnormalize
from patchguard.runtime.views import ViewDefense

SMOKE = ["--data", "fashion-mnist", "--limit", "256", "--eval-limit", "8", "--batch-size", "128",
         "--threads", "1", "--cnn-config", '{"stem": [3, 2, 8], "stages": [[16, 1, 2]]}']


def _train(out, *extra):
    result = CliRunner().invoke(train_main, [*SMOKE, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.fashion_mnist
def test_trains_a_band_model_with_its_record_seeded_and_resumable(tmp_path):
    _train(tmp_path / "a", "--defense", "ds", "--band", "6", "--theta", "0.3", "--epochs", "2", "--seed", "3")
    model, record = load_checkpoint(tmp_path / "a" / "model.pt")
    assert record.arch == "cnn" and record.defense.to_dict() == {
        "kind": "ds", "band": 6, "theta": 0.3, "encoding": "x,1-x"}
    assert record.model_channels == 2
    with torch.no_grad():
        assert tuple(model(torch.zeros(3, 2, 28, 28)).shape) == (3, 10)
    lines = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(0 <= line["certified"] <= line["accuracy"] <= 1 for line in lines)
    # Interrupted after epoch 1 (last.pt is written before the report), then
    # --resume: the same weights as straight through.
    (images, labels), _, _ = load_training_data("fashion-mnist", record, 256, 0)
    config = TrainConfig(epochs=2, batch_size=128, patch_px=record.default_patch_px, seed=3)

    def stop(report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(record, images, labels, tmp_path / "b", config, view_augment(record), on_epoch=stop)
    result = _train(tmp_path / "b", "--defense", "ds", "--band", "6", "--theta", "0.3", "--epochs", "2",
                    "--seed", "3", "--resume")
    assert '"epoch": 2' in result.output and '"epoch": 1' not in result.output
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.fashion_mnist
def test_trains_a_crop_model_and_refuses_a_crop_larger_than_the_image(tmp_path):
    _train(tmp_path / "a", "--defense", "crops", "--crop", "10", "--crop-stride", "6", "--epochs", "1")
    _, record = load_checkpoint(tmp_path / "a" / "model.pt")
    assert record.defense.to_dict() == {"kind": "crops", "crop": 10, "crop_stride": 6, "theta": 0.4,
                                        "encoding": "x,1-x"}
    result = CliRunner().invoke(train_main, [*SMOKE, "--out", str(tmp_path / "b"), "--defense", "crops",
                                             "--crop", "29", "--epochs", "1"])
    assert result.exit_code != 0 and result.output.count("Error:") == 1 and "crop" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["ds", "crops"])
def test_each_training_view_is_one_runtime_view_of_its_image(kind):
    defense = ViewDefense(kind=kind, band=5 if kind == "ds" else 0, crop=9 if kind == "crops" else 0,
                          crop_stride=1 if kind == "crops" else 0, theta=0.0, encoding="x,1-x")
    record = cnn_record(defense)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (16, 1, 28, 28)).astype(np.float32)
    views = view_augment(record)(torch.from_numpy(x), torch.Generator().manual_seed(0)).numpy()
    grid = band_keep((28, 28), 5) if kind == "ds" else crop_keep((28, 28), 9, 1)
    every = encode(unnormalize(x, record.mean, record.std)[:, None], grid[None])   # (16, V, 2, 28, 28)
    for n in range(16):
        assert any(np.array_equal(views[n], every[n, v]) for v in range(len(grid)))
