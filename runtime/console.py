"""What every command shares: one-line errors, logging set-up, progress bars.

Commands are click commands with ``cls=Command``: a :class:`PatchGuardError`
becomes ``Error: <message>`` on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Optional

import click

from .errors import PatchGuardError


class Command(click.Command):
    """A click command with one-line errors.

    ``multi_value=("--patch-size",)`` lets those options take several values
    after one flag (``--patch-size 2 3 5``), as well as repeated flags.
    """

    def __init__(self, *args: Any, multi_value: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_value = multi_value

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
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        try:
            return super().invoke(ctx)
        except PatchGuardError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None


def progress(total: Optional[int], desc: str, disable: bool = False) -> Any:
    """A tqdm bar on stderr when tqdm is installed, else a silent stand-in."""
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
