"""pg-attack: the PGD patch attack against robust masking, and its report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchguard.models import build_model, small_record
from patchguard.models.attack import AttackConfig, Outcome, PatchAttack
from patchguard.models.attack_report import attack_report
from patchguard.models.cli import attack_main
from patchguard.models.reference import robust_masking

PLAIN = 0.015  # class 0's evidence in every cell of the hand-built model


@pytest.fixture(scope="module")
def bright_votes():
    """A BagNet with r = 1 on raw pixels (mean 0, std 1): every cell gives class 0
    ("plain") the constant logit PLAIN and class 1 ("bright") its pixel value."""
    record = small_record({"spatial": [[1, 1, 1]], "pointwise": []}, num_classes=2,
                          class_names=("plain", "bright"), mean=(0.0,), std=(1.0,))
    model = build_model(record)
    with torch.no_grad():
        model.body[0][0].weight.fill_(1.0)
        model.fc.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.fc.bias.copy_(torch.tensor([PLAIN, 0.0]))
    return model.eval(), record


def images_by_hand() -> tuple[np.ndarray, np.ndarray]:
    """With a 5x5 patch (window 5x5 cells) and 784 cells:
    - image 0: a 4x4 bright block. Evidence: plain 784 c - 25 c = 759 c = 11.4;
      bright 16 - 16 = 0 -> prediction plain. A bright 5x5 patch elsewhere becomes
      the largest bright window (25 > 16) and is masked instead of the block:
      bright = 16 + 25 - 25 = 16 > 11.4 -> broken. Not certified (upper bound 16).
    - image 1: all dark. Bright evidence only ever sits in the patch's window and
      is masked: certified (lower bound 734 c = 11.0 > upper bound 0), held.
    - image 2: image 1 labelled bright: misclassified, not attacked.
    """
    images = np.zeros((3, 1, 28, 28), dtype=np.float32)
    images[0, 0, 2:6, 3:7] = 1.0
    return images, np.array([0, 0, 1])


def test_attack_breaks_what_it_can_and_nothing_certified(bright_votes):
    model, record = bright_votes
    attack = PatchAttack(model, record, AttackConfig(patch_px=5, steps=5, stride=4))
    assert attack.window == (5, 5)
    images, labels = images_by_hand()
    results = attack.run(images, labels)
    assert [r.certified for r in results] == [False, True, False]
    assert [r.outcome for r in results] == [Outcome.BROKEN, Outcome.HELD, Outcome.MISCLASSIFIED]
    broken = results[0]
    assert broken.prediction == 1 and broken.margin < 0
    # The patch found must really break it: paste it and run the defended model.
    top, left = broken.position
    x = torch.from_numpy(images[:1]).clone()
    x[0, :, top : top + 5, left : left + 5] = torch.from_numpy(broken.patch)
    with torch.no_grad():
        assert int(robust_masking(model(x), (5, 5))[0]) == 1
    report = attack_report(results, attack)
    assert report["certified"] == {"n": 1, "broken": 0, "success_rate": 0.0}
    assert report["uncertified"] == {"n": 1, "broken": 1, "success_rate": 1.0}
    assert report["misclassified"] == 1 and report["certified_broken"] == []
    assert report["clean_accuracy"] == pytest.approx(2 / 3)
    assert report["robust_accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "--steps"), ({"stride": 0}, "--stride"), ({"thres": 1.0}, "--thres"),
    ({"clip": 0.0}, "--clip"), ({"patch_px": 29}, "does not fit"), ({"patch_px": (2, 30)}, "does not fit"),
])
def test_bad_settings_are_clear_errors(bright_votes, changes, message):
    from patchguard.runtime import PatchGuardError

    model, record = bright_votes
    with pytest.raises(PatchGuardError, match=message):
        PatchAttack(model, record, AttackConfig(**changes))


@pytest.mark.fashion_mnist
def test_cli_on_the_bundled_model(tmp_path):
    out = tmp_path / "attack.json"
    result = CliRunner().invoke(attack_main, ["--limit", "20", "--steps", "3", "--stride", "4",
                                              "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("n", "patch_size", "window", "steps", "stride", "clean_accuracy", "certified_accuracy",
                "robust_accuracy", "misclassified", "certified", "uncertified", "certified_broken", "seconds"):
        assert key in report, key
    assert report["n"] == 20 and report["patch_size"] == [5, 5] and report["data"] == "fashion-mnist"
    cert, unc = report["certified"], report["uncertified"]
    assert cert["n"] + unc["n"] + report["misclassified"] == 20
    assert cert["broken"] == 0 and report["certified_broken"] == []
    assert report["certified_accuracy"] == cert["n"] / 20
    assert report["robust_accuracy"] == (cert["n"] + unc["n"] - unc["broken"]) / 20
    assert "attack success: uncertified" in result.output


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(attack_main, ["--checkpoint", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: checkpoint {tmp_path / 'missing.pt'} does not exist"]
    result = CliRunner().invoke(attack_main, ["--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "not 'fashion-mnist', a folder" in result.output


def test_cli_help():
    result = CliRunner().invoke(attack_main, ["--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "pg-attack --limit 200" in result.output
