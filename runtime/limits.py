"""Sane ranges, checked before anything large is allocated.

A number from a flag or a model's metadata that would make the tools
allocate tens of gigabytes (a 100000-pixel frame, a batch of 100000, a
million classes) is refused here with one line, instead of ending in a
traceback or the OOM killer. Memory estimates are deliberately rough (they
count the big arrays once, times a stated factor for the copies the
computation makes); the budget is ``--max-memory`` where a command has it,
else a fraction of the machine's RAM.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from .errors import PatchGuardError

MAX_SIDE = 16384          # pixels per side of an input, a frame or a model input
MAX_CLASSES = 100_000     # classes of a classifier
MAX_MAP_CELLS = 1 << 20   # feature cells (H x W) of a local-logit map
DEFAULT_MEMORY_FRACTION = 0.5


def physical_memory() -> Optional[int]:
    """Bytes of RAM, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def parse_memory(text: str, flag: str = "--max-memory") -> int:
    """``"4G"``, ``"512M"``, ``"2.5GiB"`` or plain bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not match:
        raise PatchGuardError(f"{flag} takes a size such as 4G or 512M, got {text!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    value = int(float(match.group(1)) * scale)
    if value < 1 << 20:
        raise PatchGuardError(f"{flag} {text} is below 1 MiB")
    return value


def memory_budget(max_memory: Optional[str] = None) -> int:
    """The budget in bytes: ``max_memory`` parsed, else half the RAM (8 GiB if unknown)."""
    if max_memory:
        return parse_memory(max_memory)
    ram = physical_memory()
    return int((ram if ram else 16 << 30) * DEFAULT_MEMORY_FRACTION)


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def check_memory(need: float, budget: int, what: str) -> None:
    """Refuse ``what`` when its estimated ``need`` (bytes) exceeds ``budget``."""
    if need > budget:
        raise PatchGuardError(
            f"{what} needs about {gib(need)}, above the memory budget of {gib(budget)} "
            "(--max-memory, default half the RAM): make it smaller")


def check_side(value: int, what: str) -> int:
    """A pixel count per side in 1..MAX_SIDE."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise PatchGuardError(f"{what} must be a whole number of pixels in 1..{MAX_SIDE}, got {value!r}")
    return value
