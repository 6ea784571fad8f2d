"""Calibration images: a seeded draw from a folder of pictures or from ``fashion-mnist``.

Files are listed and decoded by the runtime's own readers
(:func:`patchguard.runtime.sources.list_images` and ``read_image``), so calibration
accepts the file types pg-run accepts and sees the pixels pg-run sees; every image
then goes through :func:`patchguard.runtime.preprocess.preprocess` with the model's
record (same crop, resize, channel order, mean/std). ``calib_size`` images are
drawn at random with a fixed seed, so two exports of the same model on the same
data calibrate on the same images.

A folder is searched recursively and its image files are taken in sorted order
before the seeded draw; a file that cannot be decoded is skipped with a warning
and the next one in the draw takes its place.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..runtime.console import progress
from ..runtime.datasets import fashion_mnist_dir, load_fashion_mnist
from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord
from ..runtime.preprocess import preprocess
from ..runtime.sources import IMAGE_SUFFIXES, UNREADABLE, list_images, read_image

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
DEFAULT_CALIB_SIZE = 256
DEFAULT_SEED = 0
CALIB_BATCH = 16


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
        given = 0
        for index in rng.permutation(len(self.files)):
            if given == self.size:
                return
            path = self.files[index]
            frame = read_image(path)
            if frame is None:
                log.warning("skipping %s: %s", path, UNREADABLE)
                continue
            given += 1
            yield frame

    @property
    def planned(self) -> int:
        """How many images the draw asks for (fewer when the folder holds fewer)."""
        return min(self.size, len(self.files) or self.size)


def calibration_source(calib_data: str, size: int, seed: int = DEFAULT_SEED) -> CalibrationSource:
    """Check ``calib_data`` (a folder or ``fashion-mnist``) and describe the draw; decodes nothing."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise PatchGuardError(f"calibration size must be a positive number of images, got {size!r}")
    if str(calib_data) == FASHION_MNIST:
        # Load once up front so a missing dataset fails before any work starts.
        images, _ = load_fashion_mnist("train")
        if size > len(images):
            log.info("Fashion-MNIST train has %d images; calibrating on all of them", len(images))
        return CalibrationSource(FASHION_MNIST, int(size), seed)
    folder = Path(calib_data)
    if folder.exists() and not folder.is_dir():
        raise PatchGuardError(f"calibration data {folder} is neither a folder nor {FASHION_MNIST!r}")
    files = list_images(folder)
    if not files:
        raise PatchGuardError(f"calibration folder {folder} holds no images (looked for "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
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

    ``get_next()`` returns ``{input_name: batch}``, or None when done (the protocol
    ``quantize_static`` expects; onnxruntime checks it by duck typing, so this module
    needs no onnxruntime). Nothing is decoded before the first call, so a calibration
    cache hit reads no image. ``images``: how many the activation ranges come from
    (those handed out; on a cache hit, the count the cache recorded). A progress bar
    runs while images are handed out.
    """

    def __init__(self, source: CalibrationSource, record: ModelRecord, input_name: str,
                 batch_size: int = CALIB_BATCH) -> None:
        self.source = source
        self.images: Optional[int] = 0
        self._batches = calibration_batches(source, record, batch_size)
        self._input_name = input_name
        self._bar: Optional[Any] = None

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self._bar is None:
            self._bar = progress(self.source.planned, "calibrating")
        batch = next(self._batches, None)
        if batch is None:
            self.close()
            return None
        self.images = (self.images or 0) + len(batch)
        self._bar.update(len(batch))
        return {self._input_name: batch}

    def close(self) -> None:
        """Close the progress bar (done at the end of the data; again after an error)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __iter__(self) -> "CalibrationReader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
