"""The one exception family of the project, and the exit codes it maps to.

The command-line tools turn a :class:`PatchGuardError` into a one-line message
and the error's :attr:`~PatchGuardError.exit_code`; anything else is a bug and
keeps its traceback. :class:`ExitCode` is the contract a supervisor (systemd,
a ROS launch file, a shell loop) acts on; pg-run documents it in ``--help``.
"""
from __future__ import annotations

import enum
import importlib
from types import ModuleType


class ExitCode(enum.IntEnum):
    """Exit statuses of the commands (pg-run uses all of them)."""

    OK = 0                  # the source ended normally / the command did what was asked
    USAGE = 1               # a usage or input error, before the first frame
    CERTIFICATE_BROKEN = 2  # pg-attack: a certified image was broken (a bug to report)
    SOURCE_LOST = 3         # the source was lost or ended early (camera dropped, video truncated)
    OUTPUT_FAILED = 4       # an output could not be written (disk full, I/O error, closed pipe)
    ALERT = 5               # pg-run --on-alert exit: provable detection raised an alert (stop the robot)
    INTERRUPTED = 130       # SIGINT (Ctrl-C), after a clean summary and finalised outputs
    TERMINATED = 143        # SIGTERM, likewise


EXIT_CODES_HELP = (
    "Exit status: 0 the source ended normally; 1 a usage or input error before the first "
    "frame; 3 the source was lost or ended early (camera or stream dropped, video truncated); "
    "4 an output could not be written; 5 an alert with --on-alert exit (provable detection saw "
    "a patch-like disagreement: the last row written is the alerting frame); 130 / 143 on "
    "SIGINT / SIGTERM (after the summary, with the outputs finalised)."
)


class PatchGuardError(Exception):
    """Something the user asked for cannot be done; the message says why."""

    exit_code: ExitCode = ExitCode.USAGE


class MissingDependencyError(PatchGuardError):
    """An optional dependency (a pip extra) is not installed."""


class InferenceError(PatchGuardError):
    """The model failed to run on a batch the caller gave it correctly (the runtime's
    own error, a closed backend, outputs that do not match the record): a fault of
    the model or the machine, not of the frames in that batch."""


class OutputError(PatchGuardError):
    """An output could not be written (disk full, I/O error, a closed pipe)."""

    exit_code = ExitCode.OUTPUT_FAILED


class SourceLostError(PatchGuardError):
    """The frame source was lost or ended before it should have."""

    exit_code = ExitCode.SOURCE_LOST


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT.

    A BaseException so that no ``except Exception`` on the way swallows it.
    """


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a one-line ``Error:`` quotes of a third-party exception: the first line
    of its message, or its class name when it has none, at most ``limit`` characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def lazy_import(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with "
            f"pip install 'patchguard-edge[{extra}]'"
        ) from None
