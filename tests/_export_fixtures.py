"""Helpers shared by the export, backend and probe tests (real exports, no mocks)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from click.testing import CliRunner


def export_small(folder: Path, name: str = "small", fp16: bool = False) -> Path:
    """A randomly initialised small BagNet exported by our exporter: ``folder/name.onnx``."""
    import torch

    from patchguard.export.fp16 import to_fp16
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import build_model, record_for

    torch.manual_seed(0)
    record = record_for("smallbagnet")
    model = build_model(record).eval()
    proto = export_onnx(model, record)
    path = save_onnx(proto, folder / f"{name}.onnx")
    if fp16:
        save_onnx(to_fp16(proto), folder / f"{name}.fp16.onnx")
    return path


def run_cli(args: Sequence[str]) -> Any:
    from patchguard.export.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result: Any, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one ``Error:`` line holding every fragment."""
    text = result.output  # click >= 8.2: stdout and stderr interleaved, as a user sees them
    assert result.exit_code == 1, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def visible_files(folder: Path) -> list[str]:
    """Everything in ``folder``, staging leftovers (dot files) included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
