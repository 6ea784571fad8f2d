"""Torch-free runtime: geometry, masking and certification, backends, pipeline."""
from .errors import MissingDependencyError, PatchGuardError
from .geometry import map_size, window_shape, window_size
from .metadata import ModelRecord

__all__ = [
    "PatchGuardError", "MissingDependencyError", "ModelRecord",
    "window_size", "window_shape", "map_size",
]
