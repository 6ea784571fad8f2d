"""Labelled data sets (:func:`open_labelled`, :func:`load_labelled`), and
Fashion-MNIST from the standard idx files, read with numpy (torch-free).

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


class LabelledSet:
    """A labelled set read by row range, at model size (:meth:`read`): what the
    single-process loader reads whole and each ``pg-certify --ray`` read task
    reads a slice of, on its node, with the same code. Picklable (paths only)."""

    def __init__(self, table: Any, record: Any, length: int, class_names: tuple[str, ...],
                 description: str) -> None:
        self.table = table
        self.record = record
        self.length = length
        self.class_names = class_names
        self.description = description

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images at model size and int64 labels of rows [start, stop) (a folder's
        unreadable images skipped, with a warning each)."""
        images, labels, color = self.table.read(start, min(stop, self.length))
        return at_model_size(images, self.record, color), labels

    @property
    def may_skip(self) -> bool:
        """Reads may return fewer rows than asked (a folder's unreadable images)."""
        return isinstance(self.table, _Folder)


def at_model_size(images: Any, record: Any, color: str) -> np.ndarray:
    """uint8 images (N, h, w[, c]) (or a list of differently sized ones) at the
    model's size and channels; images that already fit pass unchanged."""
    channels = () if record.in_channels == 1 else (record.in_channels,)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == 1 and not channels:
        images = images[..., 0]
    if isinstance(images, np.ndarray) and images.shape[1:] == (*record.input_size, *channels):
        return images
    from .preprocess import to_model_image

    shape = (0, *record.input_size, *channels)
    resized = [to_model_image(image, record, color=color) for image in images]
    return np.stack(resized) if resized else np.zeros(shape, np.uint8)


class _FashionMnist:
    def __init__(self, split: str, root: Optional[Path]) -> None:
        self.split, self.root = split, root
        self._arrays: Optional[tuple[np.ndarray, np.ndarray]] = None
        self.length = len(self._load()[1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # a Ray read task reads the files on its node

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_fashion_mnist(self.split, self.root)
        return self._arrays

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, str]:
        images, labels = self._load()
        return images[start:stop], labels[start:stop], "bgr"  # 2-D: the order is moot


class _Folder:
    def __init__(self, folder: Path) -> None:
        from .sources import list_image_folder

        self.paths, self.labels, self.class_names = list_image_folder(folder)
        self.length = len(self.paths)

    def read(self, start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray, str]:
        from .sources import read_images

        images, kept = read_images(self.paths[start:stop])
        return images, self.labels[start:stop][kept], "bgr"


def open_labelled(data: str, record: Any, split: str = "test", limit: Optional[int] = None) -> LabelledSet:
    """The one opener of labelled data (nothing decoded yet): ``"fashion-mnist"``
    (or a folder with its idx files; ``split`` "train" or "test"), a folder
    with one sub-folder per class, a NumPy table (``X.npz``, or ``X.npy`` with
    ``X.labels.npy``) or a Parquet file (:mod:`.tables`). ``limit`` keeps the
    first N rows (a folder: the first N files, unreadable ones then skipped)."""
    if limit is not None and limit < 1:
        raise PatchGuardError(f"--limit must be at least 1, got {limit}")
    folder = Path(data)
    table: Any
    if data == FASHION_MNIST or (folder.is_dir() and fashion_mnist_available(folder)):
        table = _FashionMnist(split, None if data == FASHION_MNIST else folder)
        names, description = FASHION_MNIST_CLASSES, f"{FASHION_MNIST} {split}"
    elif folder.suffix in (".npz", ".npy", ".parquet", ".pq") and not folder.is_dir():
        from .tables import NumpyTable, ParquetTable

        if not folder.is_file():
            raise PatchGuardError(f"--data {data}: no such file")
        table = ParquetTable(folder) if folder.suffix in (".parquet", ".pq") else NumpyTable(folder)
        names, description = tuple(record.class_names), str(folder)
    elif folder.is_dir():
        table = _Folder(folder)
        names, description = tuple(table.class_names), str(folder)
    else:
        raise PatchGuardError(f"--data {data}: not '{FASHION_MNIST}', a folder, "
                              "nor a .npz / .npy / .parquet table")
    length = table.length if limit is None else min(limit, table.length)
    return LabelledSet(table, record, length, names, description)


def load_labelled(data: str, record: Any, split: str = "test", limit: Optional[int] = None) -> Labelled:
    """The one loader of labelled data (:func:`open_labelled`), read whole at the
    record's size and channels (Fashion-MNIST is resized for models that take
    other inputs); ``limit`` keeps the first N."""
    found = open_labelled(data, record, split, limit)
    images, labels = found.read(0, found.length)
    if not len(images):
        raise PatchGuardError(f"no readable images in {found.description}")
    return Labelled(images, labels, found.class_names, found.description)
