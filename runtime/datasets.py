"""Fashion-MNIST from the standard idx files, read with numpy (torch-free).

Debian's ``dataset-fashion-mnist`` package puts them under
``/usr/share/datasets/fashion-mnist``; any folder holding the four
``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` files works too
(``PATCHGUARD_FASHION_MNIST`` or an explicit path).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import PatchGuardError
from .files import PathText

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
_PREFIX = {"train": "train", "test": "t10k"}


def fashion_mnist_dir(root: Optional[PathText] = None) -> Path:
    """Where the idx files are: ``root``, ``$PATCHGUARD_FASHION_MNIST`` or Debian's path."""
    return Path(root or os.environ.get("PATCHGUARD_FASHION_MNIST") or FASHION_MNIST_DIR)


def fashion_mnist_available(root: Optional[PathText] = None) -> bool:
    folder = fashion_mnist_dir(root)
    return any((folder / f"t10k-images-idx3-ubyte{ext}").exists() for ext in (".gz", ""))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise PatchGuardError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PatchGuardError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise PatchGuardError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def load_fashion_mnist(
    split: str = "test", root: Optional[PathText] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ("train" or "test")."""
    if split not in _PREFIX:
        raise PatchGuardError(f"split must be one of {sorted(_PREFIX)}, got {split!r}")
    folder = fashion_mnist_dir(root)
    found = {}
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [folder / f"{_PREFIX[split]}-{kind}-ubyte{ext}" for ext in (".gz", "")]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise PatchGuardError(
                f"Fashion-MNIST {split} {kind.split('-')[0]} not found in {folder} "
                "(apt-get install dataset-fashion-mnist, or set PATCHGUARD_FASHION_MNIST)"
            )
        found[kind] = _read_idx(path)
    images, labels = found["images-idx3"], found["labels-idx1"]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise PatchGuardError(f"Fashion-MNIST files in {folder} do not match each other")
    return images, labels.astype(np.int64)


FASHION_MNIST = "fashion-mnist"


def fits_fashion_mnist(record: Any) -> bool:
    """The model takes Fashion-MNIST as it is: 28x28, one channel."""
    return record.in_channels == 1 and tuple(record.input_size) == (28, 28)


@dataclass(frozen=True)
class Labelled:
    """A labelled image set at model size: uint8 images (N, H, W) or (N, H, W, C),
    int64 labels (N,), the class names and where it came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    description: str


def load_labelled(data: str, record: Any, split: str = "test", limit: Optional[int] = None) -> Labelled:
    """The one loader of labelled data: ``"fashion-mnist"`` (or a folder with its idx
    files; ``split`` "train" or "test") or a folder with one sub-folder per class.

    Images come at the record's size and channels (Fashion-MNIST is resized for
    models that take other inputs); ``limit`` keeps the first N.
    """
    if limit is not None and limit < 1:
        raise PatchGuardError(f"--limit must be at least 1, got {limit}")
    folder = Path(data)
    if data == FASHION_MNIST or (folder.is_dir() and fashion_mnist_available(folder)):
        images, labels = load_fashion_mnist(split, None if data == FASHION_MNIST else folder)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        if not fits_fashion_mnist(record):
            from .preprocess import to_model_image

            images = np.stack([to_model_image(image, record) for image in images])
        return Labelled(images, labels, FASHION_MNIST_CLASSES, f"{FASHION_MNIST} {split}")
    if not folder.is_dir():
        raise PatchGuardError(f"--data {data}: not '{FASHION_MNIST}' and not a folder")
    from .sources import read_image_folder

    images, labels, names = read_image_folder(folder, record)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Labelled(images, labels, tuple(names), str(folder))
