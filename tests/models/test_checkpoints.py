"""Checkpoint layouts, their round trips, clear mismatch errors and refused pickles."""
from __future__ import annotations

import builtins
import pickle

import pytest
import torch

from patchguard.models import bagnet9, bagnet17, bagnet33, build_model, load_checkpoint, save_checkpoint, small_record
from patchguard.models.checkpoints import LAYOUTS, CheckpointError
from patchguard.models.registry import record_for
from patchguard.runtime import PatchGuardError


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-default values in every tensor, BN running stats included, so a
    load that silently skipped a key could not pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.dtype.is_floating_point:
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            else:
                value.fill_(seed + 3)
    return model.eval()


@pytest.fixture(scope="module")
def bagnet17_10() -> torch.nn.Module:
    # PatchGuard's released checkpoints: BagNet-17 with a 10-class fc.
    return randomized(bagnet17(num_classes=10), seed=1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bagnet_round_trip_every_layout(bagnet17_10, layout, tmp_path):
    path = save_checkpoint(bagnet17_10, record_for("bagnet17", num_classes=10), tmp_path / "m.pth.tar", layout)
    content = torch.load(path, weights_only=True)
    if layout in ("model_state_dict", "state_dict", "net"):
        assert list(content) == [layout]
        assert all(k.startswith("module.") for k in content[layout])
    model, record = load_checkpoint(path)  # arch and classes inferred
    assert record.arch == "bagnet17" and record.num_classes == 10
    assert_same_weights(model, bagnet17_10)
    assert not model.training


@pytest.mark.parametrize("builder, arch", [(bagnet9, "bagnet9"), (bagnet33, "bagnet33")])
def test_arch_is_inferred_from_kernels(builder, arch, tmp_path):
    original = randomized(builder(num_classes=7), seed=2)
    path = save_checkpoint(original, record_for(arch, num_classes=7), tmp_path / "plain.pt", "plain")
    model, record = load_checkpoint(path)
    assert (record.arch, record.num_classes, record.receptive_field) == (arch, 7, {"bagnet9": 9, "bagnet33": 33}[arch])
    assert_same_weights(model, original)


def test_small_project_layout_carries_the_record(tmp_path):
    record = small_record({"spatial": [[3, 2, 8], [3, 1, 8]], "pointwise": [16]}, num_classes=4,
                          class_names=("a", "b", "c", "d"))
    original = randomized(build_model(record), seed=3)
    path = save_checkpoint(original, record, tmp_path / "small.pt")
    model, loaded = load_checkpoint(path)
    assert loaded == record
    assert_same_weights(model, original)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_plain_small_state_dict_needs_its_arch(tmp_path):
    original = randomized(build_model(small_record()), seed=4)
    path = save_checkpoint(original, small_record(), tmp_path / "plain.pt", "plain")
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        load_checkpoint(path)
    model, record = load_checkpoint(path, arch="smallbagnet")
    assert record.num_classes == 10
    assert_same_weights(model, original)


def test_mismatch_names_missing_unexpected_and_wrong_shape_keys(tmp_path):
    state = randomized(build_model(small_record()), seed=5).state_dict()
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "broken.pt", arch="smallbagnet")
    message = str(info.value)
    assert "missing: fc.bias" in message and "unexpected: head.weight" in message
    assert "\n" not in message

    wide = small_record({"spatial": [[3, 1, 32], [3, 1, 64]], "pointwise": [64, 128]})
    torch.save(build_model(wide).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"wrong shape: body\.2\.0\.weight \(64, 64, 1, 1\) != \(128, 64, 1, 1\)"):
        load_checkpoint(tmp_path / "wide.pt", arch="smallbagnet")


def test_wrong_bagnet_arch_is_a_clear_error(bagnet17_10, tmp_path):
    path = save_checkpoint(bagnet17_10, record_for("bagnet17", num_classes=10), tmp_path / "b17.pt", "net")
    with pytest.raises(CheckpointError, match=r"does not fit bagnet9: wrong shape: layer3\.0\.conv2\.weight"):
        load_checkpoint(path, arch="bagnet9")


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(PatchGuardError, match="unknown checkpoint layout 'zip'"):
        save_checkpoint(build_model(small_record()), small_record(), tmp_path / "x.pt", "zip")


class WritesAFile:
    """Unpickling this calls exec(), which writes ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.exec, (f"open({self.target!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    state = build_model(small_record()).state_dict()
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": WritesAFile(str(target))}, path)
    with pytest.raises(CheckpointError, match=r"refused: it holds more than weights \(it would load exec"):
        load_checkpoint(path, arch="smallbagnet")
    assert not target.exists()

    # The payload is real: an unrestricted unpickler does run it.
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(WritesAFile(str(control))))
    assert control.read_text() == "pwned"
