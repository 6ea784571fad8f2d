"""pg-train --defense cleanser: an ordinary CNN trained on PatchCleanser's one- and two-mask cutouts."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from patchguard.models import load_checkpoint
from patchguard.models.cli import train_main
from patchguard.models.cnn import CNN224_CONFIG, CompactCNN
from patchguard.models.data import load_training_data
from patchguard.models.registry import record_for
from patchguard.models.train import TrainConfig
from patchguard.models.train_views import cleanser_augment, train_classifier
from patchguard.runtime.cleanser import pixel_mask_set

SMOKE = ["--defense", "cleanser", "--data", "fashion-mnist", "--limit", "256", "--eval-limit", "8",
         "--batch-size", "128", "--threads", "1"]


def _train(out, *extra):
    result = CliRunner().invoke(train_main, [*SMOKE, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.fashion_mnist
def test_trains_a_cleanser_cnn_with_its_record_and_resumes_identically(tmp_path):
    _train(tmp_path / "a", "--epochs", "2", "--seed", "1")
    model, record = load_checkpoint(tmp_path / "a" / "model.pt")
    assert record.arch == "cnn" and record.defense.kind == "cleanser"
    assert record.defense.masks_per_axis == (6, 6) and record.default_patch_px == 5
    with torch.no_grad():
        assert tuple(model(torch.zeros(3, 1, 28, 28)).shape) == (3, 10)
    lines = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(0 <= line["certified"] <= line["accuracy"] <= 1 for line in lines)
    # Stopped in the report of epoch 1 (last.pt is written before it), then resumed:
    # the same weights as straight through.
    out = tmp_path / "b"
    (images, labels), _, _ = load_training_data("fashion-mnist", record_for("cnn"), 256, 0)
    config = TrainConfig(epochs=2, batch_size=128, patch_px=5, seed=1)

    def stop(report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(record, images, labels, out, config, cleanser_augment(pixel_mask_set((28, 28), 5, 6), 0.0),
                         on_epoch=stop)
    result = _train(out, "--epochs", "2", "--seed", "1", "--resume")
    assert '"epoch": 2' in result.output and '"epoch": 1' not in result.output
    a, b = load_checkpoint(tmp_path / "a" / "model.pt")[0], load_checkpoint(out / "model.pt")[0]
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_augment_masks_one_or_two_mask_rectangles():
    masks = pixel_mask_set((28, 28), 5, 6)
    augment = cleanser_augment(masks, fill=0.5)
    x = torch.full((400, 1, 28, 28), 9.0)
    out = augment(x, torch.Generator().manual_seed(0))
    filled = (out == 0.5).flatten(1).sum(1)
    assert set(filled.tolist()) <= set(range(64, 129)) and (filled == 64).any() and (filled > 64).any()
    assert ((out == 0.5) | (out == 9.0)).all()


def test_compact_cnn_takes_224_frames():
    model = CompactCNN(3, 1000, CNN224_CONFIG).eval()
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 224, 224)).shape) == (1, 1000)


def test_cleanser_rejects_a_bagnet(tmp_path):
    result = CliRunner().invoke(train_main, [*SMOKE, "--arch", "smallbagnet", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "is a BagNet" in result.output
    bad = CliRunner().invoke(train_main, [*SMOKE, "--cnn-config", "{\"stem\": [3]}", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "Error: --cnn-config" in bad.output


def test_trains_an_rgb_folder_at_its_own_input_size(tmp_path):
    """--input-size and --channels: a PatchCleanser CNN for a folder of colour
    photos (real PNG files, decoded by the runtime's reader), its record
    carrying the size, RGB and ImageNet's normalisation, its mask set the
    size's; the flags refuse a BagNet and a malformed size."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for c, name in enumerate(["blue", "green", "red"]):  # OpenCV writes BGR
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(12):
            image = rng.integers(0, 60, (48, 56, 3), dtype=np.uint8)
            image[..., c] += 150
            cv2.imwrite(str(tmp_path / "photos" / name / f"{i}.png"), image)
    args = ["--defense", "cleanser", "--data", str(tmp_path / "photos"), "--epochs", "1", "--eval-limit", "0",
            "--threads", "1", "--input-size", "32x40", "--channels", "3", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    assert "36 masks of 9x10 px" in result.output  # k = 6 per axis for a 5 px patch on 32x40
    model, record = load_checkpoint(tmp_path / "run" / "model.pt")
    assert record.input_size == (32, 40) and record.in_channels == 3
    assert tuple(record.mean) == (0.485, 0.456, 0.406) and record.class_names == ("blue", "green", "red")
    with torch.no_grad():
        assert tuple(model(torch.zeros(2, 3, 32, 40)).shape) == (2, 3)
    mistakes = [(["--arch", "smallbagnet", "--defense", "mask"], "--input-size applies to a fresh --arch cnn"),
                (["--input-size", "3x3x3"], "--input-size must look like")]
    for extra, message in mistakes:
        bad = CliRunner().invoke(train_main, [*args[:-2], *extra, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 1 and message in bad.output, bad.output
