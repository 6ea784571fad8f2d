"""Calibration readers: folders of images (through the runtime's lister and decoder), Fashion-MNIST,
seeded draws, bad input."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from _calibration_fixtures import SAMPLES, write_images

from patchguard.calibration.data import FASHION_MNIST, CalibrationReader, calibration_batches, calibration_source
from patchguard.models.registry import record_for
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.preprocess import preprocess
from patchguard.runtime.sources import list_images, read_image

cv2 = pytest.importorskip("cv2")
RECORD = record_for("smallbagnet")


def test_a_folder_is_listed_by_the_runtime_lister(tmp_path: Path) -> None:
    """One set of accepted file types: calibration draws from runtime.sources.list_images."""
    write_images(tmp_path / "b", 2)
    write_images(tmp_path / "a" / "deep", 2)
    (tmp_path / "notes.txt").write_text("not an image")
    assert list(calibration_source(str(tmp_path), 8).files) == list_images(tmp_path)


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: None, "holds no images"),
    (lambda d: (d / "readme.txt").write_text("hello"), "holds no images"),
])
def test_folder_without_images_is_one_line_error(tmp_path: Path, setup, fragment: str) -> None:
    setup(tmp_path)
    with pytest.raises(PatchGuardError, match=fragment) as info:
        calibration_source(str(tmp_path), 8)
    assert "\n" not in str(info.value)


def test_missing_folder_and_plain_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(PatchGuardError, match="does not exist"):
        calibration_source(str(tmp_path / "nowhere"), 8)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(PatchGuardError, match="neither a folder"):
        calibration_source(str(tmp_path / "file.png"), 8)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_is_an_error(tmp_path: Path) -> None:
    write_images(tmp_path / "locked", 2)
    (tmp_path / "locked").chmod(0)
    try:
        with pytest.raises(PatchGuardError, match="not readable"):
            calibration_source(str(tmp_path / "locked"), 8)
    finally:
        (tmp_path / "locked").chmod(0o755)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_calibration_size_must_be_a_positive_count(tmp_path: Path, size) -> None:
    write_images(tmp_path, 2)
    with pytest.raises(PatchGuardError, match="positive"):
        calibration_source(str(tmp_path), size)


def test_corrupt_file_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    good = write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    source = calibration_source(str(tmp_path), 10)
    with caplog.at_level(logging.WARNING, logger="patchguard.calibration.data"):
        batches = list(calibration_batches(source, RECORD, batch_size=2))
    assert sum(len(b) for b in batches) == len(good)
    assert any("broken.png" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_only_corrupt_files_fail_when_read(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    source = calibration_source(str(tmp_path), 4)
    with pytest.raises(PatchGuardError, match="no readable image"):
        list(calibration_batches(source, RECORD))


def test_batches_match_the_runtime_preprocessing(tmp_path: Path) -> None:
    """Calibration sees exactly what the runtime feeds the model for the same files."""
    source = calibration_source(str(SAMPLES), 12, seed=3)
    batches = np.concatenate(list(calibration_batches(source, RECORD, batch_size=5)))
    assert batches.shape == (12, RECORD.in_channels, *RECORD.input_size)
    assert batches.dtype == np.float32
    frames = list(source.frames())
    assert np.array_equal(batches, preprocess(frames, RECORD))
    # The frames are files of the folder, decoded as pg-run decodes them (and as OpenCV reads them).
    readings = [read_image(p) for p in source.files]
    assert all(np.array_equal(r, cv2.imread(str(p), cv2.IMREAD_COLOR)) for r, p in zip(readings, source.files))
    assert all(any(np.array_equal(f, r) for r in readings) for f in frames)


def test_draw_is_seeded_and_sized(tmp_path: Path) -> None:
    write_images(tmp_path, 20)
    first = list(calibration_source(str(tmp_path), 7, seed=1).frames())
    again = list(calibration_source(str(tmp_path), 7, seed=1).frames())
    other = list(calibration_source(str(tmp_path), 7, seed=2).frames())
    assert len(first) == 7
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert len(list(calibration_source(str(tmp_path), 50).frames())) == 20  # all there are


def test_identity_follows_file_changes(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 4)
    before = calibration_source(str(tmp_path), 4).identity()
    assert calibration_source(str(tmp_path), 4).identity() == before
    assert calibration_source(str(tmp_path), 3).identity() != before
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = calibration_source(str(tmp_path), 4).identity()
    assert touched != before
    write_images(tmp_path / "more", 1)
    assert calibration_source(str(tmp_path), 4).identity() not in (before, touched)


def test_reader_speaks_the_onnxruntime_protocol(tmp_path: Path) -> None:
    write_images(tmp_path, 5)
    reader = CalibrationReader(calibration_source(str(tmp_path), 5), RECORD, "input", batch_size=2)
    sizes = []
    while (item := reader.get_next()) is not None:
        assert list(item) == ["input"]
        sizes.append(len(item["input"]))
    assert sizes == [2, 2, 1] and reader.images == 5


@pytest.mark.fashion_mnist
def test_fashion_mnist_draws_train_images() -> None:
    from patchguard.runtime.datasets import load_fashion_mnist

    source = calibration_source(FASHION_MNIST, 9)
    frames = list(source.frames())
    assert len(frames) == 9 and all(f.shape == (28, 28) for f in frames)
    train, _ = load_fashion_mnist("train")
    rows = {train[i].tobytes() for i in range(len(train))}
    assert all(f.tobytes() in rows for f in frames)
    assert source.identity()["data"] == FASHION_MNIST
