"""Frame sources and the shared image readers, on real files made here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.camera import open_camera
from patchguard.runtime.datasets import load_labelled
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import ModelRecord
from patchguard.runtime.sources import decode_image, list_images, open_source, read_image

cv2 = pytest.importorskip("cv2")

GRAY = ModelRecord(arch="smallbagnet", num_classes=2, input_size=(28, 28), receptive_field=5,
                   stride=1, mean=(0.5,), std=(0.5,), in_channels=1)


def _png(path: Path, value: int, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), value, dtype=np.uint8)
    image[: size[0] // 2] = 255 - value  # not flat, so resizing has something to do
    assert cv2.imwrite(str(path), image)
    return path


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    return path


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    for i in range(10):
        _png(folder / f"img{i:02d}.png", 20 * i)
    _corrupt(folder / "broken.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_list_images_sorted_and_ignores_other_files(image_folder: Path) -> None:
    _png(image_folder / "sub" / "deeper.jpg", 7)
    found = list_images(image_folder)
    assert found == sorted(found)
    assert all(p.suffix in (".png", ".jpg") for p in found)
    assert len(found) == 12  # 10 + the corrupt one (by suffix) + sub/deeper.jpg
    assert len(list_images(image_folder, recursive=False)) == 11


def test_list_images_walks_sub_folders_in_sorted_order(tmp_path: Path) -> None:
    """(Was tests/calibration/test_data.py::test_folder_is_searched_recursively_in_sorted_order.)"""
    for folder in (tmp_path / "b", tmp_path / "a" / "deep"):
        for i in range(2):
            _png(folder / f"img{i}.png", i)
    (tmp_path / "notes.txt").write_text("not an image")
    found = list_images(tmp_path)
    assert found == sorted(found)
    assert [p.relative_to(tmp_path).parts[0] for p in found] == ["a", "a", "b", "b"]
    with pytest.raises(PatchGuardError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(PatchGuardError, match="is not a folder"):
        list_images(found[0])


def test_read_image_returns_bgr_or_none(image_folder: Path, tmp_path: Path) -> None:
    image = read_image(image_folder / "img03.png")
    assert image is not None and image.dtype == np.uint8 and image.shape == (40, 30, 3)
    assert read_image(image_folder / "broken.png") is None
    assert read_image(tmp_path / "missing.png") is None
    (tmp_path / "empty.png").write_bytes(b"")
    assert read_image(tmp_path / "empty.png") is None


def test_decode_image_as_sent_keeps_gray_alpha_and_16_bit() -> None:
    import cv2

    for image in (np.full((4, 5), 200, np.uint8), np.full((4, 5, 4), 9, np.uint8), np.full((4, 5), 4000, np.uint16)):
        data = np.frombuffer(cv2.imencode(".png", image)[1].tobytes(), dtype=np.uint8)
        sent = decode_image(data, as_sent=True)
        assert sent is not None and sent.dtype == image.dtype and np.array_equal(sent, image)
        color = decode_image(data)
        assert color is not None and color.dtype == np.uint8 and color.shape == (4, 5, 3)
    assert decode_image(np.frombuffer(b"not a png", dtype=np.uint8), as_sent=True) is None


def test_folder_source_skips_corrupt_with_one_warning(image_folder: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with open_source(str(image_folder)) as source:
        items = list(source)
    assert [item.index for item in items] == list(range(10))
    assert [Path(item.name).name for item in items] == [f"img{i:02d}.png" for i in range(10)]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "broken.png" in warnings[0].getMessage()


def test_glob_and_single_image_sources(image_folder: Path) -> None:
    with open_source(str(image_folder / "img0[0-4].png")) as source:
        assert len(list(source)) == 5
    with open_source(str(image_folder / "img07.png")) as source:
        (item,) = list(source)
        assert item.index == 0 and item.image.shape == (40, 30, 3) and item.name.endswith("img07.png")
        assert item.color == "bgr" and item.capture_time is None
    with pytest.raises(PatchGuardError, match="no image files match"):
        open_source(str(image_folder / "*.gif"))


def _video(path: Path, count: int, size: tuple[int, int] = (64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(count):
        frame = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        frame[:, : (i % size[0]) + 1] = 200
        writer.write(frame)
    writer.release()
    return path


def test_video_source_knows_its_length(tmp_path: Path) -> None:
    with open_source(str(_video(tmp_path / "clip.avi", 25))) as source:
        assert source.length == 25 and source.fps == pytest.approx(10.0)
        frames = list(source)
    assert len(frames) == 25 and frames[0].image.shape == (48, 64, 3)


def test_truncated_video_ends_cleanly(tmp_path: Path) -> None:
    data = _video(tmp_path / "clip.avi", 40).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with open_source(str(cut)) as source:
        frames = list(source)
    assert 0 < len(frames) < 40


def test_unopenable_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PatchGuardError, match="camera 7") as info:
        open_camera(7)
    assert "\n" not in str(info.value)
    (tmp_path / "junk.avi").write_bytes(os.urandom(1000))
    with pytest.raises(PatchGuardError, match="neither an image nor a video"):
        open_source(str(tmp_path / "junk.avi"))
    with pytest.raises(PatchGuardError, match="no file, folder"):
        open_source(str(tmp_path / "nothing-here"))
    with pytest.raises(PatchGuardError, match="cannot be opened"):
        open_source("rtsp://127.0.0.1:9/none")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(PatchGuardError, match="holds no image files"):
        open_source(str(tmp_path / "empty"))


def test_gstreamer_pipeline_needs_gstreamer_opencv() -> None:
    has = any(line.strip().startswith("GStreamer:") and "YES" in line
              for line in cv2.getBuildInformation().splitlines())
    if has:
        pytest.skip("this OpenCV has GStreamer; the refusal path does not apply")
    with pytest.raises(PatchGuardError, match="GStreamer"):
        open_source("videotestsrc num-buffers=3 ! videoconvert ! appsink")


def test_a_class_folder_set_reads_at_model_size(tmp_path: Path) -> None:
    for label, name in enumerate(("cats", "dogs")):
        for i in range(3 + label):
            _png(tmp_path / "data" / name / f"{i}.png", 40 * i + label)
    _corrupt(tmp_path / "data" / "dogs" / "bad.png")
    (tmp_path / "data" / "README.txt").write_text("ignored")
    found = load_labelled(str(tmp_path / "data"), GRAY)
    images, labels, names = found.images, found.labels, list(found.class_names)
    assert names == ["cats", "dogs"]
    assert images.shape == (7, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1] and labels.dtype == np.int64
    with pytest.raises(PatchGuardError, match="sub-folder"):
        load_labelled(str(tmp_path / "data" / "cats"), GRAY)
