"""One frozen record per model variant: the facts export and runtime read.

Receptive field and stride of the small BagNets follow from their layer
configuration; the official BagNets' come from the paper (r = 9/17/33, s = 8)
and are verified empirically by the tests and by the exporter's probe.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..runtime.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ..runtime.errors import PatchGuardError
from ..runtime.geometry import IntOrPair, as_pair
from ..runtime.metadata import ModelRecord
from ..runtime.views import ViewDefense
from . import bagnet
from .cnn import CompactCNN, default_config
from .small import SmallBagNet, receptive_field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BAGNET_RF = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33}

# The bundled default: designed for 28x28 grayscale Fashion-MNIST, 5x5 patches.
DEFAULT_SMALL_CONFIG: dict[str, Any] = {
    "spatial": [[3, 1, 32], [3, 1, 64]],
    "pointwise": [128, 128],
}


def _bagnet_record(arch: str) -> ModelRecord:
    return ModelRecord(
        arch=arch,
        num_classes=1000,
        input_size=(224, 224),
        receptive_field=BAGNET_RF[arch],
        stride=8,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        in_channels=3,
        crop_fraction=224 / 256,
        default_patch_px=32,
    )


def small_record(config: Optional[dict[str, Any]] = None, **changes: Any) -> ModelRecord:
    """Record of a :class:`SmallBagNet` (Fashion-MNIST defaults)."""
    config = dict(config or DEFAULT_SMALL_CONFIG)
    spatial = config["spatial"]
    r, s = receptive_field([k for k, _, _ in spatial], [st for _, st, _ in spatial])
    base = ModelRecord(
        arch="smallbagnet",
        num_classes=10,
        input_size=(28, 28),
        receptive_field=r,
        stride=s,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        class_names=FASHION_MNIST_CLASSES,
        in_channels=1,
        default_patch_px=5,
        config={"spatial": spatial, "pointwise": list(config["pointwise"])},
    )
    return base.replace(**changes) if changes else base


def cnn_record(defense: ViewDefense, config: Optional[dict[str, Any]] = None, **changes: Any) -> ModelRecord:
    """Record of a :class:`CompactCNN` run by a view defense (Fashion-MNIST defaults).

    An ordinary classifier has no locality premise: receptive field and
    stride are 0 and the record says which defense runs it.
    """
    base = ModelRecord(
        arch="cnn",
        num_classes=10,
        input_size=(28, 28),
        receptive_field=0,
        stride=0,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        class_names=FASHION_MNIST_CLASSES,
        in_channels=1,
        default_patch_px=5,
        defense=defense,
    )
    base = base.replace(**changes) if changes else base
    return base.replace(config=dict(config or default_config(base.input_size)))


# PatchCleanser's mask set for the 28x28 default: k = 6 masks per axis.
CLEANSER_DEFENSE = ViewDefense(kind="cleanser", masks_per_axis=(6, 6), fill=0.0)

RECORDS: dict[str, ModelRecord] = {
    **{arch: _bagnet_record(arch) for arch in BAGNET_RF},
    "smallbagnet": small_record(),
    "cnn": cnn_record(CLEANSER_DEFENSE),
}


def record_for(
    arch: str,
    num_classes: Optional[int] = None,
    input_size: Optional[IntOrPair] = None,
    class_names: Optional[Sequence[str]] = None,
) -> ModelRecord:
    """The registered record of ``arch`` with the user's overrides applied."""
    if arch not in RECORDS:
        raise PatchGuardError(f"unknown arch {arch!r}; known: {', '.join(sorted(RECORDS))}")
    return with_overrides(RECORDS[arch], num_classes, input_size, class_names)


def with_overrides(
    record: ModelRecord,
    num_classes: Optional[int] = None,
    input_size: Optional[IntOrPair] = None,
    class_names: Optional[Sequence[str]] = None,
) -> ModelRecord:
    """``record`` with another class count (names reset), input size or class names."""
    changes: dict[str, Any] = {}
    if num_classes is not None and num_classes != record.num_classes:
        changes["num_classes"] = num_classes
        changes["class_names"] = ()
    if class_names is not None:
        changes["class_names"] = tuple(class_names)
        changes.setdefault("num_classes", len(class_names))
    if input_size is not None:
        changes["input_size"] = as_pair(input_size, "input size")
        if record.arch == "cnn" and changes["input_size"] != record.input_size:
            changes["config"] = default_config(changes["input_size"])
    return record.replace(**changes) if changes else record


def build_model(record: ModelRecord) -> nn.Module:
    """A fresh (randomly initialised) module for ``record``.

    Built first on torch's ``meta`` device (shapes only, no memory) to count
    the parameters: a record asking for absurd layer widths is refused with
    one line instead of an allocation failure or the OOM killer.
    """
    from ..runtime.limits import check_memory, memory_budget

    try:
        with torch.device("meta"):
            shapes_only = _construct(record)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise PatchGuardError(f"the {record.arch} record's config is malformed: {exc}") from None
    count = sum(p.numel() for p in shapes_only.parameters())
    # Weights, gradients and the optimiser's two moments when training: four copies.
    check_memory(16 * count, memory_budget(), f"a {record.arch} with {count:,} parameters")
    return _construct(record)


def _construct(record: ModelRecord) -> nn.Module:
    if record.arch in BAGNET_RF:
        return getattr(bagnet, record.arch)(num_classes=record.num_classes)
    if record.arch == "smallbagnet":
        config = record.config or DEFAULT_SMALL_CONFIG
        return SmallBagNet(
            in_channels=record.in_channels,
            num_classes=record.num_classes,
            spatial=config["spatial"],
            pointwise=config["pointwise"],
        )
    if record.arch == "cnn":
        return CompactCNN(record.model_channels, record.num_classes, record.config or None)
    raise PatchGuardError(f"unknown arch {record.arch!r}; known: {', '.join(sorted(RECORDS))}")
