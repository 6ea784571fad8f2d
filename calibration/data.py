"""Calibration images: a folder of pictures or the name ``fashion-mnist``.

The INT8 calibrator must see inputs exactly as the runtime will, so every
image goes through :func:`patchguard.runtime.preprocess.preprocess` with the
model's record (same crop, resize, channel order, mean/std). ``calib_size``
images are drawn at random with a fixed seed, so two exports of the same
model on the same data calibrate on the same images.

A folder is searched recursively and its image files are taken in sorted
order before the seeded draw; a file OpenCV cannot decode is skipped with a
warning and the next one in the draw takes its place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..runtime.datasets import fashion_mnist_dir, load_fashion_mnist
from ..runtime.errors import PatchGuardError, lazy_import
from ..runtime.metadata import ModelRecord
from ..runtime.preprocess import preprocess

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
DEFAULT_CALIB_SIZE = 256
DEFAULT_SEED = 0
# What cv2.imread decodes in pip's and JetPack's OpenCV builds.
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), or a one-line error."""
    if not folder.exists():
        raise PatchGuardError(f"calibration folder {folder} does not exist")
    if not folder.is_dir():
        raise PatchGuardError(
            f"calibration data {folder} is neither a folder nor {FASHION_MNIST!r}"
        )
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PatchGuardError(f"calibration folder {folder} is not readable")
    problems: list[OSError] = []
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, onerror=problems.append):
        dirs.sort()
        found.extend(Path(root) / name for name in files
                     if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    if problems and problems[0].filename == str(folder):
        raise PatchGuardError(
            f"calibration folder {folder} is not readable: {problems[0].strerror}")
    for problem in problems:
        log.warning("skipping unreadable folder %s: %s", problem.filename, problem.strerror)
    if not found:
        raise PatchGuardError(
            f"calibration folder {folder} holds no images (looked for "
            f"{', '.join(IMAGE_SUFFIXES)}, recursively)"
        )
    return sorted(found)


@dataclass(frozen=True)
class CalibrationSource:
    """A seeded draw of ``size`` calibration images from ``name``.

    ``name`` is a folder or :data:`FASHION_MNIST`; ``files`` are the folder's
    image files (empty for the dataset). Nothing is decoded until
    :meth:`frames` is iterated, so a calibration cache hit reads no image.
    """

    name: str
    size: int
    seed: int = DEFAULT_SEED
    files: tuple[Path, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What the calibration result depends on: file names, sizes, mtimes (or the dataset)."""
        files: list[list[Any]] = []
        if self.name == FASHION_MNIST:
            idx = fashion_mnist_dir() / "train-images-idx3-ubyte.gz"
            stat = idx.stat() if idx.exists() else None
            files = [[str(idx), stat.st_size, stat.st_mtime_ns]] if stat else [[str(idx)]]
        else:
            root = Path(self.name)
            for path in self.files:
                try:
                    stat = path.stat()
                    files.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
                except OSError:
                    files.append([str(path.relative_to(root)), None, None])
        digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()
        return {"data": self.name, "files": len(files), "files_sha256": digest,
                "size": self.size, "seed": self.seed}

    def frames(self) -> Iterator[np.ndarray]:
        """Up to ``size`` frames as OpenCV reads them (uint8 gray or BGR), seeded order."""
        rng = np.random.default_rng(self.seed)
        if self.name == FASHION_MNIST:
            images, _ = load_fashion_mnist("train")
            count = min(self.size, len(images))
            for index in rng.choice(len(images), size=count, replace=False):
                yield images[index]
            return
        cv2 = lazy_import("cv2", "cpu")
        given = 0
        for index in rng.permutation(len(self.files)):
            if given == self.size:
                return
            path = self.files[index]
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:  # corrupt, unreadable or not really an image
                log.warning("skipping %s: OpenCV cannot read it as an image", path)
                continue
            given += 1
            yield frame


def calibration_source(calib_data: str, size: int, seed: int = DEFAULT_SEED) -> CalibrationSource:
    """Check ``calib_data`` (a folder or ``fashion-mnist``) and describe the draw."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise PatchGuardError(f"calibration size must be a positive number of images, got {size!r}")
    if str(calib_data) == FASHION_MNIST:
        # Load once up front so a missing dataset fails before any work starts.
        images, _ = load_fashion_mnist("train")
        if size > len(images):
            log.info("Fashion-MNIST train has %d images; calibrating on all of them", len(images))
        return CalibrationSource(FASHION_MNIST, int(size), seed)
    folder = Path(calib_data)
    files = list_images(folder)
    if size > len(files):
        log.info("%s holds %d images, fewer than the %d asked for; using all of them",
                 folder, len(files), size)
    return CalibrationSource(str(folder), int(size), seed, tuple(files))


def calibration_batches(
    source: CalibrationSource, record: ModelRecord, batch_size: int = 16
) -> Iterator[np.ndarray]:
    """Float32 NCHW batches (n <= batch_size, C, H, W), preprocessed as the runtime does.

    Raises :class:`PatchGuardError` when not one image could be read.
    """
    pending: list[np.ndarray] = []
    total = 0
    for frame in source.frames():
        pending.append(frame)
        if len(pending) == batch_size:
            total += len(pending)
            yield preprocess(pending, record)
            pending = []
    if pending:
        total += len(pending)
        yield preprocess(pending, record)
    if total == 0:
        raise PatchGuardError(f"no readable image in {source.name} to calibrate on")
    log.info("calibrated on %d images from %s", total, source.name)


class CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` face over :func:`calibration_batches`.

    ``get_next()`` returns ``{input_name: batch}`` or None when done (the
    protocol ``quantize_static`` expects); ``images`` counts what was handed out.
    """

    def __init__(self, source: CalibrationSource, record: ModelRecord, input_name: str,
                 batch_size: int = 16, bar: Optional[Any] = None) -> None:
        self._batches = calibration_batches(source, record, batch_size)
        self._input_name = input_name
        self._bar = bar
        self.images = 0

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.images += len(batch)
        if self._bar is not None:
            self._bar.update(len(batch))
        return {self._input_name: batch}

    def __iter__(self) -> "CalibrationReader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
