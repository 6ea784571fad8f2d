"""What every command shares: one-line errors, logging set-up, progress bars,
``--version``, ``--quiet`` and ``--log-level``.

Commands are click commands with ``cls=Command``: a :class:`PatchGuardError`
becomes ``Error: <message>`` on stderr and the error's exit status (1 for a
usage or input error, see :class:`~.errors.ExitCode`), never a traceback.
Progress bars are drawn only when stderr is a terminal: in a log file their
carriage returns are junk.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import Any, Iterator, Optional

import click

from .errors import ExitCode, PatchGuardError, Terminated

DISTRIBUTION = "patchguard-edge"
LOG_LEVELS = ("debug", "info", "warning", "error")


def tool_version() -> str:
    """The installed distribution's version ("unknown" when run from an uninstalled tree)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"{ctx.info_name} ({DISTRIBUTION}) {tool_version()}")
    ctx.exit(0)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    ctx.meta[f"patchguard.{param.name}"] = value


def _common_options() -> list[click.Option]:
    return [
        click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                     callback=_print_version, help="Print the version and exit."),
        click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_remember,
                     help="Only warnings and errors on stderr (same as --log-level warning)."),
        click.Option(["--log-level"], type=click.Choice(LOG_LEVELS), default=None,
                     expose_value=False, callback=_remember,
                     help="Messages on stderr from this level up [default: info]."),
    ]


class Command(click.Command):
    """A click command with one-line errors.

    ``multi_value=("--patch-size",)`` lets those options take several values
    after one flag (``--patch-size 2 3 5``), as well as repeated flags.
    """

    def __init__(self, *args: Any, multi_value: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_value = multi_value
        self.params.extend(_common_options())

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        current = None
        for token in args:
            if token in self.multi_value:
                current = token
            elif token.startswith("-"):
                current = None
            elif current is not None and expanded and expanded[-1] != current:
                expanded.append(current)
            expanded.append(token)
        return super().parse_args(ctx, expanded)

    def invoke(self, ctx: click.Context) -> Any:
        level = ctx.meta.get("patchguard.log_level") or (
            "warning" if ctx.meta.get("patchguard.quiet") else "info")
        logging.basicConfig(level=level.upper(), format="%(message)s", stream=sys.stderr, force=True)
        try:
            return super().invoke(ctx)
        except PatchGuardError as exc:
            raise _exit_with(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _exit_with("interrupted", ExitCode.INTERRUPTED) from None
        except Terminated:
            raise _exit_with("terminated", ExitCode.TERMINATED) from None


def _exit_with(message: str, code: int) -> click.ClickException:
    error = click.ClickException(message)
    # ClickException.exit_code is a class variable (click >= 8.5 types it so); one instance carries its own code.
    setattr(error, "exit_code", int(code))  # noqa: B010 (a plain assignment fails type checks on click >= 8.5)
    return error


class StopSignals:
    """SIGINT / SIGTERM as exceptions, so that ``finally`` blocks finalise the outputs.

    SIGINT raises KeyboardInterrupt, SIGTERM :class:`~.errors.Terminated`,
    once; further signals are only recorded. Set :attr:`finalising` when the
    clean-up starts: from then on signals are recorded, never raised, so none
    can cut the finalisation short (a supervisor that cannot wait sends
    SIGKILL, which the file formats survive). :attr:`exit_code` is 130 / 143
    for the first signal received, else None. Outside the main thread (an
    embedding program) nothing is installed.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.finalising = False
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._pending = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and not self.finalising:
            if self._holding:  # raised when the held step ends
                self._pending = True
                return
            self._raise(signum)

    @staticmethod
    def _raise(signum: int) -> None:
        if signum == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A step no signal cuts in two (one frame written to every output):
        a signal arriving inside is raised as it ends."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending and not self.finalising and self.received is not None:
            self._pending = False
            self._raise(self.received)

    @property
    def exit_code(self) -> Optional[ExitCode]:
        if self.received is None:
            return None
        return ExitCode.TERMINATED if self.received == signal.SIGTERM else ExitCode.INTERRUPTED

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                # A signal the parent set to be ignored (SIGINT of a background job) stays ignored.
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def info(message: str) -> None:
    """A line for the person at the terminal (summaries), on stderr; --quiet hides it."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        click.echo(message, err=True)


def progress(total: Optional[int], desc: str, disable: bool = False) -> Any:
    """A tqdm bar on stderr when tqdm is installed, stderr is a terminal and
    the log level shows info; else a silent stand-in."""
    if disable or not sys.stderr.isatty() or not logging.getLogger().isEnabledFor(logging.INFO):
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=disable,
                dynamic_ncols=True, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass
