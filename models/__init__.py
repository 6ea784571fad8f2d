"""BagNet models, their records, checkpoints and the PyTorch reference defense."""
from .bagnet import BagNet, bagnet9, bagnet17, bagnet33
from .checkpoints import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from .records import RECORDS, build_model, record_for, small_record
from .small import SmallBagNet

__all__ = [
    "BagNet", "bagnet9", "bagnet17", "bagnet33", "SmallBagNet",
    "RECORDS", "record_for", "small_record", "build_model",
    "DEFAULT_CHECKPOINT", "load_checkpoint", "save_checkpoint",
]
