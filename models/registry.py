"""The model registry: every architecture and every bundled weights file, as data.

An :class:`Architecture` is a default record (the facts export and runtime
read: receptive field, stride, input size, mean/std, classes) plus the
builder of a fresh module for a record of it; :func:`record_for` and
:func:`build_model` are the only ways in. A :class:`BundledWeights` entry
names a checkpoint shipped in the ``patchguard.models.weights`` data package,
read through ``importlib.resources`` so it works from any install
(torchvision's weights-as-data, ``models/_api.py``).

Receptive field and stride of the small BagNets follow from their layer
configuration; the official BagNets' come from the paper (r = 9/17/33, s = 8,
:data:`.bagnet.VARIANTS`) and are verified empirically by the tests and by the
exporter's probe.
"""
from __future__ import annotations

import contextlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

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
        receptive_field=bagnet.VARIANTS[arch].receptive_field,
        stride=bagnet.STRIDE,
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



@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its default record and the builder of a fresh
    (randomly initialised) module for any record of it."""

    record: ModelRecord
    build: Callable[[ModelRecord], nn.Module]


def _build_bagnet(record: ModelRecord) -> nn.Module:
    return bagnet.BagNet(bagnet.VARIANTS[record.arch].kernel3, record.num_classes)


def _build_small(record: ModelRecord) -> nn.Module:
    config = record.config or DEFAULT_SMALL_CONFIG
    return SmallBagNet(in_channels=record.in_channels, num_classes=record.num_classes,
                       spatial=config["spatial"], pointwise=config["pointwise"])


def _build_cnn(record: ModelRecord) -> nn.Module:
    return CompactCNN(record.model_channels, record.num_classes, record.config or None)


ARCHITECTURES: dict[str, Architecture] = {
    **{arch: Architecture(_bagnet_record(arch), _build_bagnet) for arch in bagnet.VARIANTS},
    "smallbagnet": Architecture(small_record(), _build_small),
    "cnn": Architecture(cnn_record(CLEANSER_DEFENSE), _build_cnn),
}


def _architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise PatchGuardError(f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def record_for(
    arch: Union[str, ModelRecord],
    num_classes: Optional[int] = None,
    input_size: Optional[IntOrPair] = None,
    class_names: Optional[Sequence[str]] = None,
) -> ModelRecord:
    """The registered record of ``arch`` (or the record given, e.g. a checkpoint's) with the
    user's overrides: another class count (names reset), input size or class names."""
    record = arch if isinstance(arch, ModelRecord) else _architecture(arch).record
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
    return _architecture(record.arch).build(record)


@dataclass(frozen=True)
class BundledWeights:
    """A checkpoint shipped in the ``patchguard.models.weights`` data package."""

    name: str  # file stem: ``<name>.pt``, training history ``<name>.history.jsonl``
    arch: str
    summary: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.pt"

    def is_installed(self) -> bool:
        return (importlib.resources.files(WEIGHTS_PACKAGE) / self.file_name).is_file()

    @contextlib.contextmanager
    def path(self) -> Iterator[Path]:
        """A real file path for the weights while the context is open (a zip
        install extracts them to a temporary file), or one error if they are not installed."""
        if not self.is_installed():
            raise PatchGuardError(f"the bundled weights {self.file_name} are not installed; pass --checkpoint PATH")
        with importlib.resources.as_file(importlib.resources.files(WEIGHTS_PACKAGE) / self.file_name) as path:
            yield Path(path)

    def load(self, **overrides: Any) -> tuple[nn.Module, ModelRecord]:
        """Model (eval mode) and record, as :func:`.checkpoints.load_checkpoint` reads them."""
        from .checkpoints import load_checkpoint

        with self.path() as path:
            return load_checkpoint(path, **overrides)


WEIGHTS_PACKAGE = "patchguard.models.weights"
WEIGHTS: dict[str, BundledWeights] = {w.name: w for w in (
    BundledWeights("fashion_mnist_bagnet", "smallbagnet",
                   "the default model: a small BagNet (r=5, s=1) for 28x28 Fashion-MNIST, 5 px patches"),
    BundledWeights("fashion_mnist_cleanser", "cnn",
                   "PatchCleanser's classifier: a compact CNN for 28x28 Fashion-MNIST (pg-train --defense cleanser)"),
    BundledWeights("fashion_mnist_ds", "cnn", "derandomized smoothing, column bands b = 8 (pg-train --defense ds)"),
    BundledWeights("fashion_mnist_crops", "cnn", "crop voting, 8 px crops every 4 px (pg-train --defense crops)"),
)}
DEFAULT_WEIGHTS = WEIGHTS["fashion_mnist_bagnet"]
