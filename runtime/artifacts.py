"""An artifact set (NAME.onnx, NAME.fp16.onnx, NAME.plan, ...) committed all or nothing.

A set is built in a hidden staging folder ``OUT/.NAME.export-*`` and committed
in three steps:

1. the manifest ``NAME.manifest.json`` (every file of the new set with its
   SHA-256 and size) is written into the staging folder;
2. the journal ``OUT/.NAME.commit.json`` is renamed into place: the commit
   point. It names the staging folder, the files to move (the manifest last)
   and the earlier files to remove;
3. the journal is applied (:func:`apply_journal`): each staged file is renamed
   over its final name, the removed ones are deleted, the manifest goes last,
   and the staging folder and the journal disappear.

A kill before step 2 leaves the old set untouched (the staging folder is
removed by the next run); a kill during step 3 leaves a journal that the next
run, or the next load of a model from that folder (:func:`recover`), applies
again: every step of it can be repeated. The final names therefore hold the
old set or the new one as soon as anyone looks through this module, and the
manifest says which. One exporter per folder at a time: a ``flock`` on the
folder guards the staging, the commit and recovery.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import OutputError, PatchGuardError
from .files import ensure_dir, sha256_file, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
# Test hook: seconds to sleep after each step of applying a journal, so that a
# kill can be aimed inside the commit (tools/fault_drills.py). Unset: no pause.
STEP_DELAY_ENV = "PATCHGUARD_COMMIT_STEP_DELAY"


def manifest_name(name: str) -> str:
    return f"{name}{MANIFEST_SUFFIX}"


def _journal(out: Path, name: str) -> Path:
    return out / f".{name}.commit.json"


@contextlib.contextmanager
def folder_lock(out: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the folder itself (no lock file left behind; the
    kernel releases it if the process dies). Yields False, without the lock, when
    ``wait`` is False and another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the protocol still holds for one writer
        yield True
        return
    try:
        fd = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"cannot open {out}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not wait:
                yield False
                return
            log.warning("waiting for another pg-export writing into %s to finish", out)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def _pause() -> None:
    delay = os.environ.get(STEP_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def apply_journal(out: Path, name: str) -> bool:
    """Finish the commit a journal describes; False when there is none.

    Idempotent: a file already moved is skipped, so a kill during this
    function is repaired by calling it again.
    """
    journal = _journal(out, name)
    try:
        plan = json.loads(journal.read_text())
        staging = out / plan["staging"]
        moves, removes = list(plan["move"]), list(plan["remove"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PatchGuardError(f"{journal} is unreadable ({exc}); remove it and export again") from None
    try:
        for filename in moves[:-1]:
            if (staging / filename).exists():
                os.replace(staging / filename, out / filename)
                _pause()
        for filename in removes:
            with contextlib.suppress(FileNotFoundError):
                (out / filename).unlink()
                _pause()
        if (staging / moves[-1]).exists():
            os.replace(staging / moves[-1], out / moves[-1])  # the manifest: the set is complete
            _pause()
        shutil.rmtree(staging, ignore_errors=True)
        journal.unlink()
    except OSError as exc:
        raise OutputError(f"cannot finish the commit of {name}.* in {out}: {exc.strerror}") from None
    return True


def clean_staging(out: Path, name: str) -> int:
    """Remove staging folders and temporary files left by killed exports of ``name``."""
    removed = 0
    for leftover in out.glob(f".{name}.export-*"):
        shutil.rmtree(leftover, ignore_errors=True)
        removed += 1
    for leftover in out.glob(f"..{name}.commit.json.*.part"):  # write_text_atomic's temporaries
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def recover(folder: Path, name: Optional[str] = None) -> list[str]:
    """Finish interrupted commits in ``folder`` (of ``name``, or of every name); say what was done.

    Called by the exporter before it stages anything and by the runtime
    before it loads a model from a folder holding a journal. Takes the lock,
    so a commit in progress in another process is left alone.
    """
    folder = Path(folder)
    names = [name] if name else [p.name[1:-len(".commit.json")] for p in folder.glob(".*.commit.json")]
    done: list[str] = []
    if not names:
        return done
    with folder_lock(folder, wait=False) as locked:
        if not locked:
            return done  # an export is running there: it finishes its own commit
        for one in names:
            if apply_journal(folder, one):
                done.append(f"finished the interrupted export of {one}.* in {folder}")
            if clean_staging(folder, one):
                done.append(f"removed the staging files of an interrupted export of {one}.*")
    return done


def read_manifest(out: Path, name: str) -> Optional[dict[str, Any]]:
    path = Path(out) / manifest_name(name)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PatchGuardError(f"{path} is unreadable ({exc})") from None
    return data


def verify_set(out: Path, name: str) -> list[str]:
    """Files of the committed set whose content differs from the manifest (empty: consistent)."""
    manifest = read_manifest(out, name)
    if manifest is None:
        return [f"{manifest_name(name)} is missing"]
    wrong = []
    for filename, entry in manifest["files"].items():
        path = Path(out) / filename
        if not path.is_file():
            wrong.append(f"{filename} is missing")
        elif sha256_file(path) != entry["sha256"]:
            wrong.append(f"{filename} differs from its manifest digest")
    return wrong


class Staging:
    """A hidden folder in ``out`` whose files become ``NAME.*`` on :meth:`commit`.

    Use as a context manager: it takes the folder's lock, finishes or cleans up
    what killed exports left, and removes the staging folder on the way out
    (after a commit it is already gone).
    """

    def __init__(self, out: Path, name: str) -> None:
        self.out = Path(out)
        self.name = name
        self.notes: list[str] = []
        self._lock: Optional[contextlib.ExitStack] = None
        self.dir = Path()

    def __enter__(self) -> "Staging":
        ensure_dir(self.out)
        stack = contextlib.ExitStack()
        stack.enter_context(folder_lock(self.out))
        self._lock = stack
        try:
            if apply_journal(self.out, self.name):
                self.notes.append(f"finished the interrupted earlier export of {self.name}.* first")
            clean_staging(self.out, self.name)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.name}.export-", dir=self.out))
        except OSError as exc:
            stack.close()
            raise OutputError(f"cannot write into {self.out}: {exc.strerror}") from None
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()

    def path(self, filename: str) -> Path:
        return self.dir / filename

    def commit(self, keep: list[str], remove: list[str]) -> list[Path]:
        """Make the staged files the set ``NAME.*``: all of them, or (killed) none.

        ``keep``: files of the earlier set that stay and join the new manifest
        (e.g. the ONNX an export started from); ``remove``: earlier files that
        must go (stale for the new weights). Returns the final paths written.
        """
        staged = sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))
        entries = {f: {"sha256": sha256_file(self.dir / f), "bytes": (self.dir / f).stat().st_size}
                   for f in staged}
        for filename in keep:
            if filename not in entries and (self.out / filename).is_file():
                path = self.out / filename
                entries[filename] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = manifest_name(self.name)
        write_text_atomic(self.dir / manifest, json.dumps(
            {"name": self.name, "files": dict(sorted(entries.items())),
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
        plan = {"staging": self.dir.name, "move": staged + [manifest],
                "remove": sorted(set(remove) - set(entries) - {manifest})}
        write_text_atomic(_journal(self.out, self.name), json.dumps(plan) + "\n")  # the commit point
        _pause()
        apply_journal(self.out, self.name)
        return [self.out / f for f in staged]
