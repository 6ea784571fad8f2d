"""Locality probe on real exports: BagNet-9/17/33 and the small model pass, leaky models fail."""
from __future__ import annotations

import numpy as np
import pytest
from _export_fixtures import visible_files

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from torch import nn

from patchguard.export.onnx import export_onnx
from patchguard.export.onnxfile import save_onnx
from patchguard.export.pipeline import ExportOptions, run_export
from patchguard.export.probe import LocalityError, probe_locality
from patchguard.models import build_model, record_for, small_record
from patchguard.runtime.errors import PatchGuardError


def exported(model: nn.Module, record, folder, name="m"):
    torch.manual_seed(0)
    return save_onnx(export_onnx(model.eval(), record), folder / f"{name}.onnx")


# BagNets at 64-72 px keep the probe quick; locality does not depend on the input size.
@pytest.mark.parametrize("arch,size", [("bagnet9", 64), ("bagnet17", 64), ("bagnet33", 72)])
def test_probe_accepts_official_bagnets(tmp_path, arch, size):
    torch.manual_seed(1)
    record = record_for(arch, num_classes=4, input_size=size)
    report = probe_locality(exported(build_model(record), record, tmp_path), record)
    assert report.map_size == record.map_size
    assert report.max_change_inside > report.tolerance >= report.max_change_outside


@pytest.mark.parametrize("config", [
    None,  # the bundled default: two 3x3 convs, r = 5, s = 1
    {"spatial": [[3, 2, 16], [3, 1, 16]], "pointwise": [32]},  # r = 7, s = 2
    {"spatial": [[5, 1, 8], [3, 2, 16], [3, 1, 16]], "pointwise": [16]},  # r = 11, s = 2
])
def test_probe_accepts_small_bagnets(tmp_path, config):
    torch.manual_seed(2)
    record = small_record(config)
    report = probe_locality(exported(build_model(record), record, tmp_path), record)
    assert report.map_size == record.map_size


def padded_bagnet17(record) -> nn.Module:
    """BagNet-17 whose 3x3 convolutions were "fine-tuned" with padding 1."""
    model = build_model(record)
    padded = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.padding = (1, 1)
            padded += 1
    assert padded == 4  # stem conv2 + the first block of stages 1-3
    return model


def test_probe_rejects_bagnet_with_padded_convolutions(tmp_path):
    torch.manual_seed(3)
    record = record_for("bagnet17", num_classes=4, input_size=64)
    path = exported(padded_bagnet17(record), record, tmp_path)
    with pytest.raises(LocalityError, match="not the BagNet its metadata claims"):
        probe_locality(path, record)


class GlobalLeak(nn.Module):
    """Right map size, but every cell also sees the image mean (global pooling)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


def test_probe_rejects_global_pooling_with_the_right_map_size(tmp_path):
    record = small_record()
    path = exported(GlobalLeak(build_model(record)), record, tmp_path)
    with pytest.raises(LocalityError, match="outside the receptive field"):
        probe_locality(path, record)


def test_exporter_writes_nothing_for_a_model_the_probe_rejects(tmp_path):
    record = small_record()
    model = GlobalLeak(build_model(record)).eval()
    out = tmp_path / "out"
    options = ExportOptions(out=out, name="leaky", fp16=True, engine=False, parity_n=2)
    # The static proof (runtime/verify.py) now refuses it first, naming the node; the probe's
    # own refusal of the same model is tested on the file just above.
    with pytest.raises(PatchGuardError, match="not proved local"):
        run_export(options, record, write_fp32=lambda p: save_onnx(export_onnx(model, record), p))
    assert visible_files(out) == []


def test_probe_passes_the_model_it_measures_not_the_metadata(tmp_path):
    """The probe checks the record it is given, whatever the file's metadata says."""
    record = small_record()
    path = exported(build_model(record), record, tmp_path)
    wrong = record.replace(receptive_field=3)
    with pytest.raises(LocalityError, match="26x26"):
        probe_locality(path, wrong)
    assert np.isfinite(probe_locality(path, record).max_change_inside)


def test_probe_rejects_a_padded_stem_whose_map_size_still_fits(tmp_path):
    """One padded 3x3 conv shifts every field by a pixel; at 60 px the map is still 6x6.

    Only a block ending just left of a field shows the leak, so the probe must
    sweep every pixel offset modulo the stride, not rely on random positions.
    """
    torch.manual_seed(3)
    record = record_for("bagnet17", num_classes=4, input_size=60)
    model = build_model(record)
    model.conv2.padding = (1, 1)
    with torch.no_grad():
        assert tuple(model.eval()(torch.zeros(1, 3, 60, 60)).shape[1:3]) == record.map_size
    path = exported(model, record, tmp_path)
    with pytest.raises(LocalityError, match="outside the receptive field"):
        probe_locality(path, record)
