"""The one loader of labelled data: Fashion-MNIST or a class-per-folder image set, at model size."""
from __future__ import annotations

import numpy as np
import pytest
from _calibration_fixtures import SAMPLES

from patchguard.models import record_for
from patchguard.runtime.datasets import FASHION_MNIST_CLASSES, load_labelled
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
    ("no/such/folder", None, "not 'fashion-mnist' and not a folder"),
    (str(SAMPLES), 0, "--limit must be at least 1"),
])
def test_mistakes_are_one_error(data: str, limit, message: str) -> None:
    with pytest.raises(PatchGuardError, match=message):
        load_labelled(data, record_for("smallbagnet"), limit=limit)
