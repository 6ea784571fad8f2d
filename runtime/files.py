"""Writing files so that a failure never leaves a half-written one behind.

Also the checks every command makes before writing anything: no output may be
one of its inputs (:func:`check_outputs`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

from .errors import OutputError, PatchGuardError

# What every function taking a file or folder accepts.
PathText = Union[str, "os.PathLike[str]"]


def ensure_dir(folder: PathText) -> Path:
    """Create ``folder`` (and parents) or fail with one clear line."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PatchGuardError(f"cannot create output folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise PatchGuardError(f"output folder {path} is not writable")
    return path


def temp_beside(target: PathText, suffix: str = ".part") -> Path:
    """A new empty hidden file beside ``target``, its name unique to this writer
    (two runs writing the same target never share it), with the permissions a
    plain ``open()`` would give; ``suffix`` ends its name."""
    target = Path(target)
    ensure_dir(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}") from None
    os.close(fd)
    # mkstemp creates 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(target: PathText) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place on success.

    On any exception the temporary file is removed and ``target`` keeps its
    previous content (or stays absent).
    """
    target = Path(target)
    tmp_path = temp_beside(target)
    try:
        try:
            yield tmp_path
            os.replace(tmp_path, target)
        except OSError as exc:  # disk full, I/O error: the target keeps its old content
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: PathText, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def check_name(name: str, flag: str) -> str:
    """A base name for files in an output folder: no folder part, not hidden, not empty."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise PatchGuardError(f"{flag} {name!r} must be a plain file name (no folder part); "
                              "put the folder in --out")
    if name.startswith("."):
        raise PatchGuardError(f"{flag} {name!r} must not start with '.' (hidden names are the "
                              "exporter's staging files)")
    return name


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)  # hard links and symlinks too
        except OSError:
            pass
    return a.resolve() == b.resolve()


def check_outputs(outputs: Mapping[str, Optional[PathText]],
                  inputs: Mapping[str, Optional[PathText]] = {}) -> None:
    """Refuse, before anything is written, an output that would destroy an input.

    ``outputs`` and ``inputs`` map the option (``--jsonl``) to the path given
    (None: not given; ``-`` is stdout and never clashes). Refused, one line
    each: an output that is the same file as an input (also through links),
    two outputs naming one file, an output that is an existing folder, an
    output under a path whose parent is a file, and a folder that cannot be
    written (checked by creating and removing a hidden file there).
    """
    seen: dict[Path, str] = {}
    for flag, value in outputs.items():
        if value is None or str(value) == "-":
            continue
        if not str(value).strip():
            raise PatchGuardError(f"{flag} is empty; give a file name")
        path = Path(value)
        if path.is_dir():
            raise PatchGuardError(f"{flag} {value} exists as a folder; give a file name")
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.exists() and not ancestor.is_dir():
            raise PatchGuardError(f"{flag} {value}: {ancestor} is a file, not a folder")
        _probe_writable(ancestor, flag, value)
        for in_flag, source in inputs.items():
            if source is not None and str(source).strip() and _same_file(path, Path(source)):
                raise PatchGuardError(
                    f"{flag} {value} is the same file as {in_flag} {source}; writing it would "
                    "destroy the input: choose another output name")
        key = path.resolve()
        if key in seen:
            raise PatchGuardError(f"{seen[key]} and {flag} name the same file {value}")
        seen[key] = flag


def _probe_writable(folder: Path, flag: str, value: PathText) -> None:
    """Create and remove a hidden file in ``folder``: the one test that also catches
    /proc, read-only mounts and root's blind spots of ``os.access``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".pg-write-probe-", dir=folder)
    except OSError as exc:
        raise PatchGuardError(f"{flag} {value}: cannot write into {folder}: {exc.strerror}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


class LineFile:
    """A text file of whole lines (JSON lines), written one line per ``write``.

    The file is created (or, without ``append``, emptied) at the first line,
    not before: a run that fails before producing anything leaves an earlier
    file untouched. Each line goes out in one ``os.write`` on an ``O_APPEND``
    descriptor, so a reader, a kill or a crash sees only whole lines; when a
    write fails (disk full, I/O error) or is interrupted, the file is cut back
    to its last complete line and :class:`OutputError` says how many lines it
    holds. ``-`` writes to stdout (no cut-back possible there).
    """

    def __init__(self, target: PathText, append: bool = False, flag: str = "--jsonl") -> None:
        self.target = str(target)
        self.append = append
        self.flag = flag
        self.lines = 0           # lines this object wrote
        self._fd: Optional[int] = None
        self._good = 0           # size of the file up to its last complete line

    @property
    def path(self) -> Optional[Path]:
        return None if self.target == "-" else Path(self.target)

    def _open(self) -> int:
        path = Path(self.target)
        try:
            ensure_dir(path.parent if str(path.parent) else Path("."))
        except PatchGuardError as exc:  # mid-run: an output failure, not a usage error
            raise OutputError(str(exc)) from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if not self.append:
            flags |= os.O_TRUNC
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot write {self.flag} {path}: {exc.strerror}") from None
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as handle:
                handle.seek(size - 1)
                last = handle.read(1)
            if last != b"\n":
                os.close(fd)
                raise OutputError(f"--append: {path} does not end with a complete line; "
                                  "refusing to glue a new line to it")
        self._good = size
        return fd

    def write(self, line: str) -> None:
        """Write ``line`` (no newline in it) plus a newline, whole or not at all."""
        data = (line + "\n").encode("utf-8")
        if self.target == "-":
            self._write_stdout(data)
            return
        if self._fd is None:
            self._fd = self._open()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except BaseException as exc:
            self._cut_back()
            if isinstance(exc, OSError):
                raise OutputError(
                    f"cannot write {self.flag} {self.target}: {exc.strerror or exc}; the file was "
                    f"cut back to its last complete line ({self.lines} written by this run)"
                ) from None
            raise
        self._good += len(data)
        self.lines += 1

    def _write_stdout(self, data: bytes) -> None:
        try:
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
        except (BrokenPipeError, OSError) as exc:
            # Python would complain again while flushing stdout at exit: point it elsewhere.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise OutputError(f"cannot write {self.flag} to stdout: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        self.lines += 1

    def _cut_back(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
def sha256_file(path: PathText) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (engines are hundreds of MB)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise PatchGuardError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()
