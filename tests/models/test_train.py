"""pg-train through its command line: checkpoints, history, --resume, seeding, errors."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from patchguard.models import load_checkpoint
from patchguard.models.checkpoints import read_checkpoint
from patchguard.models.cli import train_main
from patchguard.models.data import load_training_data
from patchguard.models.registry import record_for
from patchguard.models.train import TrainConfig
from patchguard.models.train import train as run_training

SMOKE = ["--data", "fashion-mnist", "--limit", "256", "--eval-limit", "64", "--batch-size", "128"]


def train(out, *extra: str):
    result = CliRunner().invoke(train_main, [*SMOKE, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The default architecture trained for 2 epochs of 2 steps each."""
    out = tmp_path_factory.mktemp("train") / "run"
    train(out, "--epochs", "2", "--seed", "3")
    return out


@pytest.mark.fashion_mnist
def test_writes_checkpoints_and_history(two_epochs):
    for name in ("model.pt", "last.pt", "epoch01.pt", "epoch02.pt"):
        assert (two_epochs / name).is_file(), name
    model, record = load_checkpoint(two_epochs / "model.pt")
    assert record.arch == "smallbagnet" and record.num_classes == 10
    assert record.class_names[0] == "T-shirt/top"
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 1, 28, 28)).shape) == (1, *record.map_size, 10)
    assert_identical(model.state_dict(), weights(two_epochs / "epoch02.pt"))
    lines = [json.loads(line) for line in (two_epochs / "history.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert line["loss"] > 0 and line["seconds"] >= 0
        assert 0 <= line["certified"] <= line["mask_accuracy"] <= 1
    last = read_checkpoint(two_epochs / "last.pt")
    assert last["epoch"] == 2 and "optimizer" in last and "schedule" in last


@pytest.mark.fashion_mnist
def test_same_seed_same_weights(two_epochs, tmp_path):
    train(tmp_path / "again", "--epochs", "2", "--seed", "3")
    assert_identical(weights(two_epochs / "model.pt"), weights(tmp_path / "again" / "model.pt"))
    train(tmp_path / "other", "--epochs", "1", "--seed", "4", "--eval-limit", "0")
    other = weights(tmp_path / "other" / "model.pt")
    assert not torch.equal(other["fc.weight"], weights(two_epochs / "epoch01.pt")["fc.weight"])


class Interrupted(Exception):
    pass


@pytest.mark.fashion_mnist
def test_resume_continues_where_it_stopped(two_epochs, tmp_path):
    # The run of the fixture, stopped after its first epoch: the training loop
    # writes last.pt before it reports the epoch, so stopping in the report
    # leaves exactly the state an interruption would.
    out = tmp_path / "interrupted"
    (images, labels), evaluation, record = load_training_data("fashion-mnist", record_for("smallbagnet"), 256, 64)
    config = TrainConfig(epochs=2, batch_size=128, lr=2e-3, patch_px=5, seed=3, eval_limit=64)

    def stop(report):
        raise Interrupted

    with pytest.raises(Interrupted):
        run_training(record, images, labels, out, config, eval_data=evaluation, on_epoch=stop)
    assert read_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "model.pt").exists()
    result = train(out, "--epochs", "2", "--seed", "3", "--resume")
    assert '"epoch": 2' in result.output and '"epoch": 1' not in result.output
    assert_identical(weights(two_epochs / "model.pt"), weights(out / "model.pt"))


@pytest.mark.fashion_mnist
def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    result = CliRunner().invoke(train_main, [*SMOKE, "--out", str(tmp_path / "fresh"), "--epochs", "1", "--resume"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: --resume: no ")
    assert "Traceback" not in result.output


def test_missing_dataset_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHGUARD_FASHION_MNIST", str(tmp_path / "nowhere"))
    result = CliRunner().invoke(train_main, ["--data", "fashion-mnist", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: Fashion-MNIST train images not found in ")
    assert "Traceback" not in result.output and len(lines) == 1


@pytest.mark.parametrize("data", ["no/such/folder", "EMPTY"])
def test_bad_data_folder_is_one_line(tmp_path, data):
    if data == "EMPTY":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    result = CliRunner().invoke(train_main, ["--data", data, "--out", str(tmp_path / "o"), "--arch", "bagnet9"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


def test_help_has_examples():
    result = CliRunner().invoke(train_main, ["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "pg-train --data fashion-mnist" in result.output
