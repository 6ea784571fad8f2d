"""The export commit protocol under kills: the final names hold the old set or the new one.

The protocol (:mod:`patchguard.runtime.artifacts`) is killed with SIGKILL at
random instants inside its commit (a step delay from the environment spreads
the commit over time so the kills land between renames), then the next run's
recovery is applied and the set checked against its manifest. The same drill
with the real pg-export is ``tools/fault_drills.py export`` (50 kills); a short
version of it runs here under the ``slow`` marker.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchguard.runtime.artifacts import STEP_DELAY_ENV, Staging, read_manifest, recover, sha256_file, verify_set

TOOLS = Path(__file__).resolve().parents[2] / "tools"

# A child that stages the set ``version`` of NAME.* in OUT and commits it.
CHILD = """
import sys
from pathlib import Path
from patchguard.runtime.artifacts import Staging
out, version, extra = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "extra"
with Staging(out, "m") as staging:
    names = ["m.onnx", "m.fp16.onnx", "m.parity.json"] + (["m.int8.onnx"] if extra else [])
    for name in names:
        staging.path(name).write_text(f"{name} version {version}\\n" * 1000)
    print("staged", flush=True)
    import time; time.sleep(0.05)  # kills in this span land before the commit point
    remove = [] if extra else ["m.int8.onnx"]
    staging.commit(keep=[], remove=remove)
"""


def commit_in_child(out: Path, version: str, extra: bool, delay: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, **({STEP_DELAY_ENV: str(delay)} if delay else {}))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), version,
                             "extra" if extra else "plain"], env=env, stdout=subprocess.PIPE, text=True)


def set_version(out: Path) -> str:
    """Which whole set the final names hold; fails on a mix or a stray file."""
    assert verify_set(out, "m") == []
    manifest = read_manifest(out, "m")
    assert manifest is not None
    present = sorted(p.name for p in out.iterdir() if p.name.startswith("m."))
    assert present == sorted([*manifest["files"], "m.manifest.json"]), present
    versions = {(out / f).read_text().split(" version ")[1].split()[0] for f in manifest["files"]}
    assert len(versions) == 1, versions
    return versions.pop()


def test_a_commit_runs_through_and_writes_the_manifest(tmp_path: Path) -> None:
    assert commit_in_child(tmp_path, "1", extra=True).wait(60) == 0
    assert set_version(tmp_path) == "1"
    manifest = read_manifest(tmp_path, "m")
    assert manifest and set(manifest["files"]) == {"m.onnx", "m.fp16.onnx", "m.parity.json", "m.int8.onnx"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_sigkill_inside_the_commit_leaves_the_old_or_the_new_set(tmp_path: Path) -> None:
    rng = random.Random(0)
    assert commit_in_child(tmp_path, "0", extra=True).wait(60) == 0
    previous, outcomes = "0", {"old": 0, "new": 0, "journal": 0}
    for round_ in range(16):
        version, extra = str(round_ + 1), round_ % 2 == 1
        child = commit_in_child(tmp_path, version, extra, delay=0.02)
        assert child.stdout is not None and child.stdout.readline().strip() == "staged"
        had_int8 = (tmp_path / "m.int8.onnx").exists()
        time.sleep(rng.uniform(0.0, 0.2))  # 0.05 s before the commit, which takes about 6 x 0.02 s
        child.send_signal(signal.SIGKILL)
        child.wait(60)
        outcomes["journal"] += any(tmp_path.glob(".m.commit.json"))
        recover(tmp_path, "m")  # what the next export or load does first
        got = set_version(tmp_path)
        assert got in (previous, version)
        outcomes["old" if got == previous else "new"] += 1
        # The removed int8 file is gone exactly when the new set without it is in place.
        assert (tmp_path / "m.int8.onnx").exists() == (extra if got == version else had_int8)
        previous = got
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    print(outcomes)
    assert outcomes["journal"] > 0, "no kill landed inside the commit; the drill proves nothing"


def test_the_runtime_finishes_an_interrupted_commit_before_loading(tmp_path: Path) -> None:
    child = commit_in_child(tmp_path, "1", extra=False, delay=0.5)
    assert child.stdout is not None and child.stdout.readline().strip() == "staged"
    deadline = time.monotonic() + 30
    while not (tmp_path / ".m.commit.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.6)  # one file moved, the rest still staged
    child.send_signal(signal.SIGKILL)
    child.wait(60)
    assert (tmp_path / ".m.commit.json").exists()
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.errors import PatchGuardError

    with pytest.raises(PatchGuardError):  # the text files are no models, but the set is whole now
        open_backend(tmp_path / "m.onnx")
    assert set_version(tmp_path) == "1"


def test_leftover_staging_is_cleaned_by_the_next_run(tmp_path: Path) -> None:
    stale = tmp_path / ".m.export-abc123"
    stale.mkdir()
    (stale / "m.onnx").write_text("half")
    with Staging(tmp_path, "m") as staging:
        staging.path("m.onnx").write_text("m.onnx version 2\n")
        staging.commit(keep=[], remove=[])
    assert not stale.exists() and set_version(tmp_path) == "2"


def test_an_unreadable_journal_is_one_line(tmp_path: Path) -> None:
    from patchguard.runtime.errors import PatchGuardError

    (tmp_path / ".m.commit.json").write_text("{not json")
    with pytest.raises(PatchGuardError, match="unreadable"):
        recover(tmp_path, "m")


@pytest.mark.slow
def test_pg_export_killed_at_random_instants_short() -> None:
    """The drill with the real pg-export, in its short form (the full one: 50 kills)."""
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(TOOLS / "fault_drills.py"), "export", "--rounds", "2"],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    assert "never a mix" in done.stdout
    json.loads(done.stdout.strip().splitlines()[-1])  # the figures, as JSON
