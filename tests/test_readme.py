"""Every code block of the README runs as written, or says where it runs instead.

Each fenced block is preceded by a marker line:

- ``<!-- readme: run -->``: run here, in README order, in a sandbox folder
  holding what the examples name (``model.onnx`` the bundled model exported,
  ``clip.avi`` the demo clip, ``photos/`` sample images, ``drive.mcap`` a ROS 2
  bag with ``/camera/image_raw``), with this interpreter's commands on PATH;
- ``<!-- readme: install -->``: the install lines, run from a copy of the
  checkout with a fresh venv and ``HOME`` (slow: pip installs torch);
- ``<!-- readme: make -->``: make targets, each of which must exist in the Makefile;
- ``<!-- readme: test tests/X.py -->``: run by that test file (which must exist);
- ``<!-- readme: skip: REASON -->``: needs what this machine lacks (a GPU, a
  camera, a Jetson, checkpoints not in the repository, an hour of training).

A block without a marker fails the first test, so a new example cannot go
unchecked by accident.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = ROOT / "samples" / "fashion-mnist-test"
MARKER = re.compile(r"<!--\s*readme:\s*(run|install|make|test|skip)\b:?\s*(.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    mode: str
    detail: str


def blocks() -> list[Block]:
    """The README's fenced blocks with the marker above each ('' when none)."""
    found, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang = lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            match = MARKER.search(above)
            found.append(Block(i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                               match.group(1) if match else "", match.group(2) if match else ""))
            i = end
        i += 1
    return found


def test_every_block_says_how_it_runs() -> None:
    missing = [f"README.md:{b.line}" for b in blocks() if not b.mode]
    assert not missing, f"code blocks without a <!-- readme: ... --> marker: {missing}"
    for b in blocks():
        if b.mode == "skip":
            assert b.detail, f"README.md:{b.line}: a skipped block must say why"
        if b.mode == "test":
            assert (ROOT / b.detail).is_file(), f"README.md:{b.line}: {b.detail} does not exist"
        if b.mode == "make":
            targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
            for target in re.findall(r"^make ([\w-]+)", b.code, re.M):
                assert target in targets, f"README.md:{b.line}: no make target {target}"


def _drive(path: Path, frames: list[np.ndarray]) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    image, header, stamp_t = (store.types[t] for t in
                              ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    folder = path.with_suffix("")
    with Writer(folder, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/camera/image_raw", image.__msgtype__, typestore=store)
        for i, frame in enumerate(frames):
            ns = 1_700_000_000 * 10**9 + i * 33_333_333
            rgb = np.ascontiguousarray(frame[..., ::-1])
            msg = image(header=header(stamp=stamp_t(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam"),
                        height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                        step=rgb.shape[1] * 3, data=rgb.reshape(-1))
            writer.write(conn, ns, store.serialize_cdr(msg, image.__msgtype__))
    shutil.move(folder / f"{folder.name}.mcap", path)
    shutil.rmtree(folder)
    return path


@pytest.fixture(scope="module")
def sandbox(default_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("rosbags")
    box = tmp_path_factory.mktemp("readme")
    shutil.copy(default_onnx, box / "model.onnx")
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_clip.py"), str(SAMPLE),
                    str(box / "clip.avi"), "--frames", "30", "--size", "112"], check=True,
                   capture_output=True)
    photos = box / "photos"
    photos.mkdir()
    images = sorted(SAMPLE.rglob("*.png"))[:12]
    for path in images:
        shutil.copy(path, photos / f"{path.parent.name}-{path.name}")
    frames = [cv2.resize(cv2.imread(str(p)), (112, 112)) for p in images]
    _drive(box / "drive.mcap", frames)
    return box


def _environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    return env


def _run_block(block: Block, cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    if block.lang == "python":
        command = [sys.executable, "-c", block.code]
    elif block.lang in ("bash", "sh", ""):
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        raise AssertionError(f"README.md:{block.line}: cannot run a {block.lang!r} block")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"README.md:{block.line} failed:\n{block.code}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.fashion_mnist
def test_run_blocks_run_as_written(sandbox: Path) -> None:
    runnable = [b for b in blocks() if b.mode == "run"]
    assert runnable
    env = _environment(sandbox)
    for block in runnable:
        _run_block(block, sandbox, env)
    # What the blocks wrote is what they say they write.
    assert (sandbox / "results.mcap").is_file() and (sandbox / "frames.jsonl").is_file()


@pytest.mark.slow
def test_install_lines_work_from_a_checkout(tmp_path: Path) -> None:
    """The install lines as written, in a copy of the checkout (fresh venvs, pip downloads)."""
    install = [b for b in blocks() if b.mode == "install"]
    assert install
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    env = _environment(tmp_path / "home")
    env["PATH"] = env["PATH"].split(os.pathsep, 1)[1]  # the system python3, not this venv's
    (tmp_path / "home").mkdir()
    for block in install:
        out = _run_block(block, checkout, env, timeout=3000)
        assert "pg-run (patchguard-edge)" in out
