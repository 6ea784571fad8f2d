"""The model registry: records (the facts export and runtime read), builders, bundled weights."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from patchguard.models import ARCHITECTURES, build_model, record_for, small_record
from patchguard.runtime import ModelRecord, PatchGuardError
from patchguard.runtime.datasets import FASHION_MNIST_CLASSES


@pytest.mark.parametrize("arch, r, cells", [("bagnet9", 9, 27), ("bagnet17", 17, 26), ("bagnet33", 33, 24)])
def test_bagnet_records(arch, r, cells):
    record = ARCHITECTURES[arch].record
    assert (record.receptive_field, record.stride) == (r, 8)
    assert record.input_size == (224, 224)
    assert record.map_size == (cells, cells)
    assert record.in_channels == 3 and record.num_classes == 1000
    assert len(record.class_names) == 1000
    assert record.mean == (0.485, 0.456, 0.406) and record.std == (0.229, 0.224, 0.225)
    assert record.crop_fraction == pytest.approx(224 / 256)
    assert record.default_patch_px == 32


def test_small_record_follows_its_configuration():
    record = small_record()
    assert record.arch == "smallbagnet"
    assert (record.in_channels, record.input_size, record.num_classes) == (1, (28, 28), 10)
    assert record.class_names == FASHION_MNIST_CLASSES
    spatial = record.config["spatial"]
    # r grows by (k - 1) * (product of earlier strides) per layer.
    r, s = 1, 1
    for kernel, stride, _ in spatial:
        r, s = r + (kernel - 1) * s, s * stride
    assert (record.receptive_field, record.stride) == (r, s)
    assert record.map_size == ((28 - r) // s + 1,) * 2
    other = small_record({"spatial": [[5, 2, 8]], "pointwise": []})
    assert (other.receptive_field, other.stride, other.map_size) == (5, 2, (12, 12))


def test_record_for_overrides():
    record = record_for("bagnet17", num_classes=10, input_size=192)
    assert record.num_classes == 10 and record.class_names == tuple(str(i) for i in range(10))
    assert record.input_size == (192, 192) and record.map_size == (22, 22)
    named = record_for("bagnet9", class_names=["cat", "dog"])
    assert (named.num_classes, named.class_names) == (2, ("cat", "dog"))
    assert record_for("bagnet33") is ARCHITECTURES["bagnet33"].record
    known = "bagnet17, bagnet33, bagnet9, cnn, smallbagnet"
    with pytest.raises(PatchGuardError, match=f"unknown arch 'resnet50'; known: {known}"):
        record_for("resnet50")


def test_build_model_follows_record():
    record = small_record({"spatial": [[3, 1, 8]], "pointwise": [8]}, num_classes=3,
                          class_names=("a", "b", "c"))
    model = build_model(record)
    assert model.fc.out_features == 3 and model.receptive_field == (3, 1)


@pytest.mark.parametrize("record", [record_for("bagnet17"), small_record()], ids=["bagnet17", "small"])
def test_json_round_trip(record):
    text = record.to_json()
    data = json.loads(text)
    for key in ("arch", "num_classes", "input_size", "mean", "std", "receptive_field", "stride", "class_names"):
        assert key in data
    assert data["map_size"] == list(record.map_size)
    assert ModelRecord.from_json(text) == record


def test_metadata_is_checked():
    data = small_record().to_dict()
    with pytest.raises(PatchGuardError, match="map"):
        ModelRecord.from_dict({**data, "map_size": [26, 26]})
    with pytest.raises(PatchGuardError, match="lacks receptive_field, stride"):
        ModelRecord.from_dict({k: v for k, v in data.items() if k not in ("receptive_field", "stride")})
    with pytest.raises(PatchGuardError, match="3 class names given for 10 classes"):
        ModelRecord.from_dict({**data, "class_names": ["a", "b", "c"]})
    with pytest.raises(PatchGuardError, match="mean/std"):
        ModelRecord.from_dict({**data, "mean": [0.1, 0.2, 0.3]})
    with pytest.raises(PatchGuardError, match="not valid JSON"):
        ModelRecord.from_json("{nope")
    with pytest.raises(PatchGuardError, match="JSON object"):
        ModelRecord.from_json("[1, 2]")


def test_records_are_frozen():
    record = small_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.stride = 2  # type: ignore[misc]


def test_every_bundled_weights_file_is_a_registry_entry_that_loads():
    import importlib.resources

    from patchguard.models import DEFAULT_WEIGHTS, WEIGHTS

    shipped = {p.name for p in importlib.resources.files("patchguard.models.weights").iterdir()
               if p.name.endswith(".pt")}
    assert shipped == {w.file_name for w in WEIGHTS.values()}
    assert DEFAULT_WEIGHTS.name == "fashion_mnist_bagnet"
    for weights in WEIGHTS.values():
        model, record = weights.load()
        assert record.arch == weights.arch and not model.training


def test_registry_builds_every_architecture_from_its_record():
    expected = {"bagnet9": "BagNet", "bagnet17": "BagNet", "bagnet33": "BagNet", "smallbagnet": "SmallBagNet",
                "cnn": "CompactCNN"}
    assert set(ARCHITECTURES) == set(expected)
    for arch, entry in ARCHITECTURES.items():
        assert entry.record.arch == arch
        with torch.device("meta"):
            assert type(entry.build(entry.record)).__name__ == expected[arch]
