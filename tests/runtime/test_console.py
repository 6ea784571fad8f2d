"""What every command shares: --version, --quiet / --log-level, no progress bars off a terminal."""
from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from patchguard.runtime.console import progress, tool_version

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _command(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_has_version_quiet_and_log_level(script: str) -> None:
    command = _command(SCRIPTS[script])
    result = CliRunner().invoke(command, ["--version"], prog_name=script)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{script} (patchguard-edge) {tool_version()}"
    assert tool_version() != "unknown"  # the tests run on an installed (editable) tree
    helptext = CliRunner().invoke(command, ["--help"], prog_name=script).output
    assert "--quiet" in helptext and "--log-level" in helptext and "--version" in helptext


def test_bad_log_level_is_one_line() -> None:
    from patchguard.runtime.cli.bench import main

    result = CliRunner().invoke(main, ["--log-level", "loud", "--synthetic-map", "4x4x2"])
    assert result.exit_code == 2 and "'loud' is not one of" in result.output


def test_quiet_and_log_level_set_the_root_level() -> None:
    from patchguard.runtime.cli.bench import main

    levels = {}
    for args in ([], ["--quiet"], ["--log-level", "debug"], ["--log-level", "error"]):
        result = CliRunner().invoke(main, [*args, "--synthetic-map", "8x8x2", "--frame", "64x64",
                                           "--iterations", "1"])
        assert result.exit_code == 0, result.output
        levels[" ".join(args)] = logging.getLogger().level
    assert levels == {"": logging.INFO, "--quiet": logging.WARNING,
                      "--log-level debug": logging.DEBUG, "--log-level error": logging.ERROR}


def test_no_progress_bar_when_stderr_is_not_a_terminal() -> None:
    # Under pytest stderr is captured, not a terminal: the stand-in, which draws nothing.
    assert not sys.stderr.isatty()
    bar = progress(10, "frames")
    assert type(bar).__name__ == "_NoBar"
    bar.update(3)
    bar.close()
