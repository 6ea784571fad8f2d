"""Labelled image tables: a Parquet file or NumPy arrays (``pg-certify --data``).

Both are read by row range (:meth:`read`), so a Ray read task opens the file
on its node and takes only its rows, and the single-process loader reads them
all with the same code.

- **NumPy**: ``X.npz`` holding ``images`` (N, H, W) or (N, H, W, C) uint8
  and ``labels`` (N,) integers (``image``/``x`` and ``label``/``y`` are
  accepted too); or ``X.npy`` (the images) with ``X.labels.npy`` next to it,
  the pair ``pg-certify --save-logits`` writes for logits.
- **Parquet**: columns ``image`` and ``label``. ``image`` is an encoded image
  file (binary: PNG, JPEG, ...; or Hugging Face's ``{bytes, path}`` struct),
  decoded like an image file, or a nested list / tensor of uint8 pixels
  (H, W) or (H, W, C).

Pixel arrays with 3 or 4 channels are taken as RGB(A), encoded images as
what OpenCV decodes (BGR); both are brought to the model's size and channels
as every other source.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import PatchGuardError, lazy_import

_IMAGE_KEYS = ("images", "image", "x")
_LABEL_KEYS = ("labels", "label", "y")


def labels_path(images: Path) -> Path:
    """``X.labels.npy`` for ``X.npy``."""
    return images.with_suffix(".labels.npy")


class NumpyTable:
    """Images and labels from ``.npz`` or an ``.npy`` pair; rows read by range."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._arrays: Optional[tuple[Any, np.ndarray]] = None
        images, labels = self._open()
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise PatchGuardError(f"{path}: images must be uint8 (N, H, W) or (N, H, W, C), "
                                  f"got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
            raise PatchGuardError(f"{path}: labels must be integers (N,) for {len(images)} images, "
                                  f"got {labels.dtype} {labels.shape}")
        self.length = len(images)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # a Ray task reopens the file on its node

    def _open(self) -> tuple[Any, np.ndarray]:
        if self._arrays is None:
            self._arrays = self._load()
        return self._arrays

    def _load(self) -> tuple[Any, np.ndarray]:
        try:
            if self.path.suffix == ".npz":
                with np.load(self.path, allow_pickle=False) as archive:
                    keys = list(archive.files)
                    image_key = next((k for k in _IMAGE_KEYS if k in keys), None)
                    label_key = next((k for k in _LABEL_KEYS if k in keys), None)
                    if image_key is None or label_key is None:
                        raise PatchGuardError(f"{self.path} holds {keys}; expected 'images' and 'labels'")
                    return archive[image_key], archive[label_key]
            pair = labels_path(self.path)
            if not pair.is_file():
                raise PatchGuardError(f"{self.path} needs its labels in {pair} (N,) integers")
            # Memory-mapped: a read task touches only its rows.
            return np.load(self.path, mmap_mode="r", allow_pickle=False), np.load(pair, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise PatchGuardError(f"cannot read {self.path} as NumPy arrays: {exc}") from None

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Rows [start, stop): images as stored, labels int64, and their colour order."""
        images, labels = self._open()
        return np.array(images[start:stop]), labels[start:stop].astype(np.int64), "rgb"


class ParquetTable:
    """A Parquet file with ``image`` and ``label`` columns; rows read by range."""

    def __init__(self, path: Path) -> None:
        self.path = path
        opened = self._file()
        meta, names = opened.metadata, set(opened.schema_arrow.names)
        if not {"image", "label"} <= names:
            raise PatchGuardError(f"{path} has columns {sorted(names)}; expected 'image' and 'label'")
        self.length = int(meta.num_rows)
        self._starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self._groups: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_groups": {}}  # a Ray task reads its own row groups

    def _file(self) -> Any:
        parquet = lazy_import("pyarrow.parquet", "parquet")
        try:
            return parquet.ParquetFile(self.path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise PatchGuardError(f"cannot read {self.path} as Parquet: {exc}") from None

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Rows [start, stop): images (decoded), labels int64, their colour order."""
        if stop <= start:
            return np.zeros((0, 1, 1), np.uint8), np.zeros(0, np.int64), "rgb"
        pa = lazy_import("pyarrow", "parquet")
        groups = [i for i in range(len(self._starts) - 1)
                  if self._starts[i] < stop and self._starts[i + 1] > start]
        # Chunks are read in order: keep the row groups just read, so a large group is
        # decoded once, not once per chunk it holds.
        kept = self._groups
        missing = [i for i in groups if i not in kept]
        if missing:
            fresh = self._file().read_row_groups(missing, columns=["image", "label"])
            offsets = np.cumsum([0] + [int(self._starts[i + 1] - self._starts[i]) for i in missing])
            kept.update({i: fresh.slice(int(a), int(b - a)) for i, a, b in zip(missing, offsets[:-1], offsets[1:])})
        self._groups = {i: kept[i] for i in groups}
        table = pa.concat_tables([self._groups[i] for i in groups])
        table = table.slice(start - int(self._starts[groups[0]]), stop - start)
        labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
        if labels.dtype.kind not in "iu":
            raise PatchGuardError(f"{self.path}: column 'label' must hold integers, got {labels.dtype}")
        cells = table.column("image").to_pylist()
        images = [_pixels(cell, self.path) for cell in cells]
        color = "bgr" if cells and isinstance(_encoded(cells[0]), bytes) else "rgb"
        return _stack(images, self.path), labels.astype(np.int64), color


def _encoded(cell: Any) -> Any:
    return cell.get("bytes") if isinstance(cell, dict) else cell


def _pixels(cell: Any, path: Path) -> np.ndarray:
    from .sources import decode_image

    data = _encoded(cell)
    if isinstance(data, bytes):
        image = decode_image(np.frombuffer(data, dtype=np.uint8))
        if image is None:
            raise PatchGuardError(f"{path}: an 'image' cell is not a readable image")
        return image
    array = np.asarray(data)
    if array.ndim not in (2, 3) or array.dtype.kind not in "iu" or array.size == 0 \
            or array.min() < 0 or array.max() > 255:
        raise PatchGuardError(f"{path}: 'image' cells must be encoded images or uint8 pixels "
                              f"(H, W[, C]), got {array.dtype} {array.shape}")
    return array.astype(np.uint8)


def _stack(images: list[np.ndarray], path: Path) -> Any:
    """One array when the images share a shape, else the list (resized one by one later)."""
    if len({image.shape for image in images}) == 1:
        return np.stack(images)
    return images
