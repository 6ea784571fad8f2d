"""Training data: Fashion-MNIST arrays or an image folder (one sub-folder per class)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..runtime.datasets import FASHION_MNIST, fits_fashion_mnist, load_labelled
from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord

Arrays = tuple[np.ndarray, np.ndarray]


def load_training_data(
    data: str, record: ModelRecord, limit: Optional[int], eval_limit: int
) -> tuple[Arrays, Optional[Arrays], ModelRecord]:
    """(train images, labels), optional evaluation arrays, and the record fitted to the data."""
    if data == FASHION_MNIST and not fits_fashion_mnist(record):
        raise PatchGuardError(f"{record.arch} takes {record.input_size} x{record.in_channels} "
                              "images; Fashion-MNIST is 28x28 grayscale (use --arch smallbagnet)")
    train = load_labelled(data, record, "train", limit)
    evaluation = None
    if data == FASHION_MNIST and eval_limit > 0:
        test = load_labelled(data, record, "test", eval_limit)
        evaluation = (test.images, test.labels)
    record = record.replace(num_classes=len(train.class_names), class_names=train.class_names)
    return (train.images, train.labels), evaluation, record
