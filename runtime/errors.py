"""The one exception family of the project.

The command-line tools turn a :class:`PatchGuardError` into a one-line message
and a non-zero exit; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class PatchGuardError(Exception):
    """Something the user asked for cannot be done; the message says why."""


class MissingDependencyError(PatchGuardError):
    """An optional dependency (a pip extra) is not installed."""


def lazy_import(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with "
            f"pip install 'patchguard-edge[{extra}]'"
        ) from None
