"""Training data: Fashion-MNIST arrays or an image folder (one sub-folder per class)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..runtime.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord

Arrays = tuple[np.ndarray, np.ndarray]


def load_training_data(
    data: str, record: ModelRecord, limit: Optional[int], eval_limit: int
) -> tuple[Arrays, Optional[Arrays], ModelRecord]:
    """(train images, labels), optional evaluation arrays, and the record fitted to the data."""
    if data == "fashion-mnist":
        if record.in_channels != 1 or tuple(record.input_size) != (28, 28):
            raise PatchGuardError(f"{record.arch} takes {record.input_size} x{record.in_channels} "
                                  "images; Fashion-MNIST is 28x28 grayscale (use --arch smallbagnet)")
        images, labels = load_fashion_mnist("train")
        evaluation = None
        if eval_limit > 0:
            test_images, test_labels = load_fashion_mnist("test")
            evaluation = (test_images[:eval_limit], test_labels[:eval_limit])
        record = record.replace(num_classes=10, class_names=FASHION_MNIST_CLASSES)
    else:
        from ..runtime.sources import read_image_folder

        folder = Path(data)
        if not folder.is_dir():
            raise PatchGuardError(f"--data {data}: not 'fashion-mnist' and not a folder")
        images, labels, names = read_image_folder(folder, record)
        record = record.replace(num_classes=len(names), class_names=tuple(names))
        evaluation = None
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return (images, labels), evaluation, record
