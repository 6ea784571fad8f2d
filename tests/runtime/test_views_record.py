"""The ``defense`` entry of the model record (README.md, "View defenses"), read and written with the record."""
from __future__ import annotations

import json

import pytest

from patchguard.runtime import ModelRecord, PatchGuardError
from patchguard.runtime.views import ViewDefense


def _cleanser_record(**changes) -> ModelRecord:
    base = ModelRecord(arch="cnn", num_classes=10, input_size=(28, 28), receptive_field=0, stride=0,
                       mean=(0.286,), std=(0.353,), in_channels=1, default_patch_px=5,
                       defense=ViewDefense(kind="cleanser", masks_per_axis=(6, 6), fill=0.0))
    return base.replace(**changes) if changes else base


def test_cleanser_entry_round_trips_with_its_derived_geometry():
    record = _cleanser_record()
    data = json.loads(record.to_json())
    assert data["defense"] == {"kind": "cleanser", "masks_per_axis": [6, 6], "fill": 0.0, "patch_px": 5,
                               "mask": [8, 8], "mask_stride": [4, 4], "views": 666}
    assert "map_size" not in data
    back = ModelRecord.from_json(record.to_json())
    assert back == record and back.defense.masks_per_axis == (6, 6)
    assert not back.is_local and back.output_shape == (10,)
    with pytest.raises(PatchGuardError, match="no local-logit map"):
        _ = back.map_size


def test_a_record_without_defense_is_a_bagnet():
    from patchguard.models import record_for

    record = record_for("smallbagnet")
    data = json.loads(record.to_json())
    assert "defense" not in data and record.is_local
    assert record.output_shape == (*record.map_size, 10)
    data["defense"] = {"kind": "local"}
    assert ModelRecord.from_dict(data).is_local


def test_view_records_need_no_receptive_field():
    data = json.loads(_cleanser_record().to_json())
    del data["receptive_field"], data["stride"]
    assert ModelRecord.from_dict(data) == _cleanser_record()


@pytest.mark.parametrize("change, message", [
    ({"kind": "blur"}, "unknown defense kind"),
    ({"masks_per_axis": None}, "masks_per_axis"),
    ({"masks_per_axis": [0, 6]}, "masks_per_axis"),
    ({"fill": float("nan")}, "finite"),
    ({"mask": [9, 9]}, "says defense"),
    ({"mask_stride": [3, 4]}, "says defense"),
])
def test_a_defense_entry_that_does_not_add_up_is_refused(change, message):
    data = json.loads(_cleanser_record().to_json())
    data["defense"].update(change)
    with pytest.raises(PatchGuardError, match=message):
        ModelRecord.from_json(json.dumps(data))


def test_defense_entry_must_be_an_object_with_its_fields():
    data = json.loads(_cleanser_record().to_json())
    for bad in ("cleanser", {"masks_per_axis": [6, 6]}, {"kind": "cleanser", "fill": 0.0}):
        data["defense"] = bad
        with pytest.raises(PatchGuardError, match="defense"):
            ModelRecord.from_json(json.dumps(data))


def test_other_kinds_validate_their_fields():
    assert ViewDefense(kind="ds", band=4, theta=0.2, encoding="x,1-x").to_dict() == {
        "kind": "ds", "band": 4, "theta": 0.2, "encoding": "x,1-x"}
    assert ViewDefense(kind="ds", band=4, encoding="x,1-x").in_channels_factor == 2
    with pytest.raises(PatchGuardError, match="band"):
        ViewDefense(kind="mask-ds", band=0, encoding="x,1-x")
    with pytest.raises(PatchGuardError, match="encoding"):
        ViewDefense(kind="ds", band=3, encoding="rgb")
    with pytest.raises(PatchGuardError, match="theta"):
        ViewDefense(kind="ds", band=3, encoding="x,1-x", theta=1.0)
    with pytest.raises(PatchGuardError, match="crop"):
        ViewDefense(kind="crops", crop=0, crop_stride=2, encoding="x,1-x")
