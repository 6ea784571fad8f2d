"""Torch-free runtime: geometry, masking and certification, backends, pipeline."""
from .certificate import CertifiedSummary, certified_patch_px, largest_certified, summarize
from .defenses import DEFENSES, certify, predict
from .errors import MissingDependencyError, PatchGuardError
from .geometry import map_size, window_shape, window_size
from .masking import NO_LABEL, robust_masking
from .metadata import ModelRecord

__all__ = [
    "PatchGuardError", "MissingDependencyError", "ModelRecord",
    "window_size", "window_shape", "map_size",
    "robust_masking", "predict", "certify", "DEFENSES", "NO_LABEL",
    "largest_certified", "certified_patch_px", "summarize", "CertifiedSummary",
]
