"""Model facts as data: the record the exporter writes and the runtime reads.

One :class:`ModelRecord` per model variant (torchvision ``models/_api.py``
style). It travels inside the ONNX file (metadata entry ``patchguard``, read
by :func:`record_from_metadata`) and next to a TensorRT engine
(``NAME.plan.json``, the sidecar: :func:`sidecar_text` / :func:`read_sidecar`,
the record plus an :class:`EngineInfo`), so nothing is configured twice. This
module is the one place both formats are read and written. Torch-free on
purpose: the robot reads it back.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import PatchGuardError
from .files import PathText
from .geometry import IntOrPair, Pair, check_fits, map_size, size_text, window_shape
from .views import ViewDefense

METADATA_KEY = "patchguard"


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _numbers(value: Any, positive: bool = False) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if positive and v <= 0:
            return False
    return True


def field_problems(data: dict[str, Any]) -> list[str]:
    """One message per field of a record that is outside its type or sane range.

    Checked before anything is computed from the record (a stride of 0 divides
    by zero, a default patch of 1e9 pixels allocates gigabytes, a string of
    class names becomes one name per character): sizes <= 16384 pixels, class
    count <= 100000, stride >= 1, 1 <= receptive field <= the input, a map of
    at most 2^20 cells.
    """
    from .limits import MAX_CLASSES, MAX_MAP_CELLS, MAX_SIDE

    problems: list[str] = []

    def need(name: str, ok: bool, what: str) -> bool:
        if name in data and not ok:
            shown = repr(data[name])
            problems.append(f"{name} must be {what}, got {shown[:60]}{'...' if len(shown) > 60 else ''}")
            return False
        return name in data

    need("arch", isinstance(data.get("arch"), str) and bool(str(data.get("arch")).strip()), "a non-empty string")
    need("num_classes", _whole(data.get("num_classes"), 1, MAX_CLASSES), f"a whole number in 1..{MAX_CLASSES}")
    size: Any = data.get("input_size")  # checked by size_ok before any use
    size_ok = need("input_size", isinstance(size, (list, tuple)) and len(size) == 2
                   and all(_whole(v, 1, MAX_SIDE) for v in size),
                   f"[height, width] in whole pixels, 1..{MAX_SIDE}")
    need("in_channels", _whole(data.get("in_channels"), 1, 64), "a whole number in 1..64")
    need("mean", _numbers(data.get("mean")), "a list of finite numbers")
    need("std", _numbers(data.get("std"), positive=True), "a list of finite numbers > 0")
    names = data.get("class_names")
    need("class_names", isinstance(names, (list, tuple)) and all(isinstance(v, str) for v in names),
         "a list of strings (one per class)")
    crop = data.get("crop_fraction")
    need("crop_fraction", not isinstance(crop, bool) and isinstance(crop, (int, float))
         and 0.0 < float(crop) <= 1.0, "a number in (0, 1]")
    need("default_patch_px", _whole(data.get("default_patch_px"), 0,
                                     max(size) if size_ok and "input_size" in data else MAX_SIDE),
         "a whole number of model pixels, 0 (none) up to the input size")
    need("config", isinstance(data.get("config"), dict), "an object")
    if data.get("defense") is None:  # a BagNet: r and s are the certificate's premises
        r: Any = data.get("receptive_field")  # checked by r_ok / s_ok before use
        s: Any = data.get("stride")
        side = min(size) if size_ok and "input_size" in data else MAX_SIDE
        r_ok = need("receptive_field", _whole(r, 1, side), f"a whole number of pixels in 1..{side} (the input)")
        s_ok = need("stride", _whole(s, 1, MAX_SIDE), f"a whole number of pixels in 1..{MAX_SIDE}")
        if r_ok and s_ok and size_ok and "input_size" in data:
            cells = map_size(size[0], r, s) * map_size(size[1], r, s)
            need("stride", cells <= MAX_MAP_CELLS, f"large enough for a map of at most {MAX_MAP_CELLS} cells")
    return problems


def check_fields(data: dict[str, Any], what: str) -> None:
    """:func:`field_problems` as one error line, every bad field named."""
    problems = field_problems(data)
    if problems:
        raise PatchGuardError(f"{what}: " + "; ".join(problems))
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class ModelRecord:
    """Everything the runtime must know about a BagNet besides its weights.

    ``input_size`` is (height, width) in model pixels; ``receptive_field`` r
    and ``stride`` s define the cells; ``crop_fraction`` < 1 means "resize the
    short side to input / crop_fraction, then centre-crop" (ImageNet's 256 ->
    224), 1.0 means "resize the whole frame to input_size".

    ``defense`` is None for a BagNet (local logits (B, H', W', K), robust
    masking; ``kind: "local"`` implied) and a :class:`ViewDefense` for an
    ordinary classifier (logits (B, K)) run by a view-based defense; such a
    model has no receptive-field premise: ``receptive_field`` and ``stride``
    are 0 and it has no ``map_size``.
    """

    arch: str
    num_classes: int
    input_size: Pair
    receptive_field: int
    stride: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    in_channels: int = 3
    crop_fraction: float = 1.0
    default_patch_px: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    defense: Optional[ViewDefense] = None

    def __post_init__(self) -> None:
        if isinstance(self.class_names, str):  # would become one name per character
            raise PatchGuardError(f"class_names must be a list of strings, got the string {self.class_names[:40]!r}")
        if isinstance(self.defense, dict):
            object.__setattr__(self, "defense", ViewDefense.from_dict(self.defense))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        names = tuple(str(v) for v in self.class_names) or tuple(
            str(i) for i in range(self.num_classes)
        )
        object.__setattr__(self, "class_names", names)
        if len(self.input_size) != 2:
            raise PatchGuardError(f"input_size must be (height, width), got {self.input_size}")
        if len(self.class_names) != self.num_classes:
            raise PatchGuardError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise PatchGuardError(
                f"mean/std need {self.in_channels} values each, got {self.mean} / {self.std}"
            )
        # Ranges, on every record however it was made (flags, checkpoints, metadata).
        check_fields({"arch": self.arch, "num_classes": self.num_classes,
                      "input_size": list(self.input_size), "in_channels": self.in_channels,
                      "mean": list(self.mean), "std": list(self.std),
                      "class_names": list(self.class_names), "crop_fraction": self.crop_fraction,
                      "default_patch_px": self.default_patch_px, "config": self.config,
                      "defense": self.defense, "receptive_field": self.receptive_field,
                      "stride": self.stride}, "model record")

    @property
    def is_local(self) -> bool:
        """True for a BagNet-style model with local logits (no view defense)."""
        return self.defense is None

    @property
    def defense_kind(self) -> str:
        """The record's ``defense.kind``; "local" for the BagNet family."""
        return "local" if self.defense is None else self.defense.kind

    @property
    def model_channels(self) -> int:
        """Channels of the model input: the image's, doubled by an (x, 1 - x) view encoding."""
        factor = self.defense.in_channels_factor if self.defense is not None else 1
        return self.in_channels * factor

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Model output per image: (H', W', K) local logits, or (K,) for an ordinary classifier."""
        if self.defense is not None:
            return (self.num_classes,)
        return (*self.map_size, self.num_classes)

    @property
    def map_size(self) -> Pair:
        """(H, W) of the local-logit map this input size gives."""
        if self.defense is not None:
            raise PatchGuardError(
                f"{self.arch} is an ordinary classifier for the {self.defense.kind} defense: "
                "it has no local-logit map"
            )
        h, w = self.input_size
        return (
            map_size(h, self.receptive_field, self.stride),
            map_size(w, self.receptive_field, self.stride),
        )

    @property
    def reference_patch_px(self) -> int:
        """The record's default patch, or a seventh of the input's short side where it has none
        (what export parity and calibration checks certify against)."""
        return self.default_patch_px or max(1, min(self.input_size) // 7)

    def window_for(self, patch_px: IntOrPair, where: str = "") -> Pair:
        """Mask window (a, b) of a patch of model pixels; one error when it does not fit the map."""
        r, s = self.receptive_field, self.stride
        return check_fits(window_shape(patch_px, r, s), self.map_size,
                          f"a {size_text(patch_px)} px patch{where} (r={r}, s={s})")

    def replace(self, **changes: Any) -> "ModelRecord":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["class_names"] = list(self.class_names)
        if self.defense is None:
            data.pop("defense")
            data["map_size"] = list(self.map_size)
        else:
            data["defense"] = self.defense.to_dict()
            data["defense"].update(self._derived_defense())
        return data

    def _derived_defense(self) -> dict[str, Any]:
        """Facts that follow from the defense and the default patch, written for readers
        and checked on reading: PatchCleanser's mask side and stride per axis."""
        if self.defense is None or self.defense.kind != "cleanser" or self.default_patch_px < 1:
            return {}
        from .cleanser import pixel_mask_set

        masks = pixel_mask_set(self.input_size, self.default_patch_px, self.defense.masks_per_axis)
        return {"patch_px": self.default_patch_px, "mask": list(masks.side),
                "mask_stride": list(masks.stride), "views": masks.pair_count}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        defense = ViewDefense.from_dict(data.get("defense"))
        required = {"arch", "num_classes", "input_size", "mean", "std"}
        if defense is None:
            required |= {"receptive_field", "stride"}
        missing = sorted(required - set(data))
        if missing:
            raise PatchGuardError(f"model metadata lacks {', '.join(missing)}")
        # Field by field, before any of them is used (stride 0 divides by zero, ...).
        check_fields(data, "model metadata")
        fields = {k: v for k, v in data.items() if k in known}
        fields["defense"] = defense
        if defense is not None:
            # An ordinary classifier has no receptive-field premise to carry.
            fields["receptive_field"], fields["stride"] = 0, 0
        try:
            record = cls(**fields)
        except (TypeError, ValueError) as exc:
            raise PatchGuardError(f"model metadata is malformed: {exc}") from None
        if defense is not None:
            derived = record._derived_defense()
            stated = {k: data["defense"][k] for k in derived if k in data["defense"]}
            if any(stated[k] != derived[k] for k in stated):
                raise PatchGuardError(f"model metadata says defense {stated} but its record gives {derived}")
        if defense is None and "map_size" in data and list(data["map_size"]) != list(record.map_size):
            raise PatchGuardError(
                f"model metadata says map {data['map_size']} but r={record.receptive_field}, "
                f"s={record.stride} at {record.input_size} gives {list(record.map_size)}"
            )
        return record

    @classmethod
    def from_json(cls, text: str) -> "ModelRecord":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PatchGuardError(f"model metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PatchGuardError("model metadata must be a JSON object")
        return cls.from_dict(data)


def record_from_metadata(metadata: Mapping[str, str], where: str) -> ModelRecord:
    """The record in a model's metadata entries (ONNX ``metadata_props`` as a mapping)."""
    if METADATA_KEY not in metadata:
        raise PatchGuardError(f"{where} has no '{METADATA_KEY}' metadata; export it with pg-export")
    return ModelRecord.from_json(metadata[METADATA_KEY])


@dataclass(frozen=True)
class EngineInfo:
    """What a ``.plan`` needs to run: recorded at build time, checked at load time.

    The machine is keyed by TensorRT version, GPU name, compute capability and
    SM count: every Orin module may report the same name ("Orin") and the same
    capability (8.7) while an engine tuned for a 16-SM AGX Orin is not one for
    an 8-SM Orin Nano (TensorRT itself warns that plans are not meant to cross
    device models). ``sm_count`` 0 is a sidecar written before it was recorded.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    max_batch: int
    input_name: str
    output_name: str
    source_onnx: str = ""
    sm_count: int = 0
    tf32: Optional[bool] = None  # fp32 engines: TF32 products allowed (None: not fp32 / not recorded)
    # Provenance (DESIGN section 7): the SHA-256 of the ONNX file the engine was built from and
    # the geometry its graph proved (runtime/verify.py); the runtime refuses a local model without.
    onnx_sha256: str = ""
    proved_geometry: Optional[dict[str, Any]] = None


def sidecar_path(plan: PathText) -> Path:
    """``NAME.plan`` -> ``NAME.plan.json``."""
    return Path(str(plan) + SIDECAR_SUFFIX)


def sidecar_text(record: ModelRecord, info: EngineInfo) -> str:
    """The sidecar JSON: the model record's fields plus an ``engine`` entry."""
    data = record.to_dict()
    data["engine"] = dataclasses.asdict(info)
    return json.dumps(data, indent=2, sort_keys=True)


def read_sidecar(plan: PathText) -> tuple[ModelRecord, EngineInfo]:
    path = sidecar_path(plan)
    if not path.is_file():
        raise PatchGuardError(f"{path} is missing; a .plan needs the sidecar pg-export wrote with it")
    try:
        data = json.loads(path.read_text())
        engine = data["engine"]
        info = EngineInfo(**{k: engine[k] for k in EngineInfo.__dataclass_fields__ if k in engine})
        if int(info.max_batch) < 1 or int(info.sm_count) < 0:  # int(): a corrupt value is this error
            raise ValueError(f"max_batch {info.max_batch} / sm_count {info.sm_count} out of range")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PatchGuardError(f"{path} is not a pg-export engine sidecar ({exc})") from None
    return ModelRecord.from_dict(data), info
