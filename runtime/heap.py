"""Keep freed memory in the process for the next frame (glibc's malloc).

Every frame allocates the same large numpy temporaries (integral images and
window sums: tens of MB for a 26x26 map of 1000 classes) and frees them.
By default glibc gives blocks that large back to the kernel (``mmap``, or
trimming the top of the heap), so the next frame touches fresh pages and
pays a page fault per 4 KiB: measured here, 5 of the 12 ms of the per-frame
readouts at 1000 classes. Raising glibc's mmap threshold to its maximum
(32 MiB on 64-bit) and its trim threshold to :data:`KEEP_BYTES` keeps them
in the heap, where the next frame reuses them; the resident size then stays
at its peak instead of shrinking between frames.

``pg-run``, ``pg-bench`` and ``pg-serve`` call :func:`keep_freed_memory` at
start; a robot node using the Python API may call it once. Where malloc is not glibc's
(musl, macOS, Windows) it changes nothing and returns False.
"""
from __future__ import annotations

import ctypes

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_BYTES = 32 << 20
#: Free memory at the top of the heap kept rather than returned to the kernel.
KEEP_BYTES = 128 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when glibc took both."""
    try:  # the process's own symbols: glibc's mallopt where malloc is glibc's
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol; Windows takes no None
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
