"""The one loader of labelled data: Fashion-MNIST or a class-per-folder image set, at model size."""
from __future__ import annotations

import numpy as np
import pytest
from _calibration_fixtures import SAMPLES

from patchguard.models import record_for
from patchguard.runtime.datasets import FASHION_MNIST_CLASSES, load_labelled, open_labelled
from patchguard.runtime.errors import PatchGuardError

pytest.importorskip("cv2")


def test_a_class_folder_at_model_size_with_its_class_names() -> None:
    found = load_labelled(str(SAMPLES), record_for("smallbagnet"), limit=5)
    assert found.images.shape == (5, 28, 28) and found.images.dtype == np.uint8
    assert found.labels.tolist() == [0] * 5
    assert found.class_names[0] == "0-t-shirt-top" and len(found.class_names) == 10


@pytest.mark.fashion_mnist
def test_fashion_mnist_resized_for_a_model_that_takes_other_inputs() -> None:
    record = record_for("bagnet17", num_classes=10)
    found = load_labelled("fashion-mnist", record, "test", limit=3)
    assert found.images.shape == (3, 224, 224, 3) and found.class_names == FASHION_MNIST_CLASSES
    small = load_labelled("fashion-mnist", record_for("smallbagnet"), "train", limit=4)
    assert small.images.shape == (4, 28, 28) and len(small.labels) == 4


@pytest.mark.parametrize("data, limit, message", [
    ("no/such/folder", None, "not 'fashion-mnist', a folder, nor a .npz"),
    (str(SAMPLES), 0, "--limit must be at least 1"),
])
def test_mistakes_are_one_error(data: str, limit, message: str) -> None:
    with pytest.raises(PatchGuardError, match=message):
        load_labelled(data, record_for("smallbagnet"), limit=limit)


@pytest.mark.fashion_mnist
def test_numpy_and_parquet_tables_read_as_the_same_images(tmp_path) -> None:
    import cv2

    pa = pytest.importorskip("pyarrow", reason="Parquet needs the [parquet] extra (pyarrow)")
    import pyarrow.parquet as pq

    record = record_for("smallbagnet")
    want = load_labelled("fashion-mnist", record, "test", limit=40)
    np.savez(tmp_path / "set.npz", images=want.images, labels=want.labels)
    np.save(tmp_path / "x.npy", want.images[..., None])  # (N, H, W, 1) is read as gray
    np.save(tmp_path / "x.labels.npy", want.labels.astype(np.int32))
    png = [cv2.imencode(".png", image)[1].tobytes() for image in want.images]
    pq.write_table(pa.table({"image": png, "label": want.labels}), tmp_path / "png.parquet",
                   row_group_size=7)
    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in png], "label": want.labels}),
                   tmp_path / "hf.parquet")
    pq.write_table(pa.table({"image": [image.tolist() for image in want.images], "label": want.labels}),
                   tmp_path / "pixels.parquet")
    for name in ("set.npz", "x.npy", "png.parquet", "hf.parquet", "pixels.parquet"):
        found = load_labelled(str(tmp_path / name), record, limit=33)
        assert np.array_equal(found.images, want.images[:33]), name
        assert found.labels.dtype == np.int64 and np.array_equal(found.labels, want.labels[:33]), name
    # Read by row ranges (as Ray's read tasks do) across 7-row groups: the same rows.
    table = open_labelled(str(tmp_path / "png.parquet"), record)
    parts = [table.read(start, start + 5) for start in range(0, 40, 5)]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), want.images)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), want.labels)
    # A 3-channel model gets the table's images resized and converted, as Fashion-MNIST's.
    big = record_for("bagnet17", num_classes=10)
    assert np.array_equal(load_labelled(str(tmp_path / "set.npz"), big, limit=2).images,
                          load_labelled("fashion-mnist", big, limit=2).images)


def test_table_mistakes_are_one_error(tmp_path) -> None:
    record = record_for("smallbagnet")
    np.savez(tmp_path / "keys.npz", pictures=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2, int))
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 28, 28)), labels=np.zeros(2, int))
    np.savez(tmp_path / "count.npz", images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(3, int))
    np.save(tmp_path / "alone.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    cases = {"keys.npz": "expected 'images' and 'labels'", "float.npz": "images must be uint8",
             "count.npz": "labels must be integers", "alone.npy": "needs its labels in",
             "broken.npz": "cannot read", "missing.npz": "no such file"}
    for name, message in cases.items():
        with pytest.raises(PatchGuardError, match=message):
            load_labelled(str(tmp_path / name), record)
    pa = pytest.importorskip("pyarrow", reason="Parquet needs the [parquet] extra (pyarrow)")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "columns.parquet")
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "bytes.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    cases = {"columns.parquet": "expected 'image' and 'label'", "bytes.parquet": "not a readable image",
             "junk.parquet": "cannot read"}
    for name, message in cases.items():
        with pytest.raises(PatchGuardError, match=message):
            load_labelled(str(tmp_path / name), record)
