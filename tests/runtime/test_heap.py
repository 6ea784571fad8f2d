"""glibc keeps a frame's freed temporaries for the next frame once pg-run has
called keep_freed_memory (runtime/heap.py); elsewhere the call changes nothing."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_FREED_MB = """
import sys
import numpy as np
from patchguard.runtime.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
a = np.ones(20 << 17)  # 20 MiB, as a 1000-class frame's window sums
before = rss_mb()
del a
print(kept, round(before - rss_mb(), 1))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt thresholds are glibc's")
def test_freed_frame_memory_stays_in_the_process_once_kept() -> None:
    def returned(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", _FREED_MB, mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], float(out[1])

    kept, kept_back = returned("keep")
    default, default_back = returned("default")
    print(f"20 MiB freed: {default_back} MiB returned to the kernel by default, {kept_back} once kept")
    assert kept == "True" and default == "None"
    assert default_back >= 19.0 and kept_back <= 1.0
