"""The Python API example in the README runs as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _pipeline_fixtures import write_video

DOC = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_snippet_runs(default_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    section = DOC.read_text().split("## Python API", 1)[-1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python example"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8) for _ in range(6)]
    write_video(tmp_path / "clip.avi", frames)
    (tmp_path / "model.onnx").symlink_to(default_onnx)
    (tmp_path / "snippet.py").write_text(blocks[0])
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 6
    # class_name certified certified_patch_px masked_box, one line per frame
    assert all(" True " in line or " False " in line for line in lines), lines
