"""Bad input and resource bombs: one ``Error:`` line each, before any large allocation,
and nothing written.

Each case runs the command as a user would (click's runner, or a fresh
process where the import state matters) and checks the exit status, that
exactly one ``Error:`` line came out, no traceback, and what is on disk.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from _fault_models import with_huge_constant
from click.testing import CliRunner

from patchguard.runtime.errors import ExitCode, PatchGuardError

cv2 = pytest.importorskip("cv2")


def one_error(result: Any, *fragments: str, code: int = ExitCode.USAGE) -> str:
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def invoke(command: Any, args: Sequence[str]) -> Any:
    return CliRunner().invoke(command, list(args))


def in_process(module: str, func: str, *args: str, block: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """A command in a fresh interpreter, with ``block`` modules made unimportable."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
            + f"from {module} import {func}\nsys.exit({func}())")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


# -- resource bombs -------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--synthetic-map", "26x26x1000000"], "at most"),
    (["--synthetic-map", "26x26x1000", "--batch", "100000"], "memory budget"),
    (["--synthetic-map", "26x26x1000", "--max-memory", "64M"], "memory budget"),
    (["--synthetic-map", "26x26x10", "--frame", "100000x100000"], "16384"),
    (["--synthetic-map", "26x26x10", "--max-memory", "lots"], "--max-memory"),
])
def test_pg_bench_bombs_are_refused_before_allocating(args: list[str], fragment: str) -> None:
    from patchguard.runtime.cli.bench import main

    one_error(invoke(main, [*args, "--iterations", "1"]), fragment)


def test_a_patch_larger_than_the_frame_is_one_line(default_onnx: Path, photo: Path) -> None:
    from patchguard.runtime.cli.run import main

    one_error(invoke(main, ["--engine", str(default_onnx), "--source", str(photo),
                            "--patch-size", "1000000000"]), "larger than the 64x48 frame")


def test_export_input_size_bomb(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from patchguard.export.cli import main

    one_error(invoke(main, ["--arch", "smallbagnet", "--random-init", "--input-size", "100000",
                            "--out", str(tmp_path / "out")]), "16384")
    assert not (tmp_path / "out").exists()


# -- tracebacks that became one line --------------------------------------------------------

def test_python_api_rejects_bad_frames_and_patches(default_onnx: Path) -> None:
    from patchguard.runtime.pipeline import Pipeline

    with Pipeline.from_engine(default_onnx) as pipeline:
        for frame in (None, np.zeros(10, np.uint8), "frame.png", np.zeros((2, 2, 2, 2), np.uint8)):
            with pytest.raises(PatchGuardError, match="expected an image array"):
                pipeline(frame)  # type: ignore[arg-type]
    for kwargs in ({"patch_size": 5.5}, {"patch_size": True}, {"patch_frac": "0.1"}):
        with pytest.raises(PatchGuardError, match="patch"):
            Pipeline.from_engine(default_onnx, **kwargs)


def test_graph_input_that_disagrees_with_the_metadata(default_onnx: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(default_onnx))
    for prop in model.metadata_props:
        if prop.key == "patchguard":
            record = json.loads(prop.value)
            record.update(in_channels=3, mean=[0.5] * 3, std=[0.5] * 3)
            prop.value = json.dumps(record)
    bad = tmp_path / "three-channels.onnx"
    onnx.save(model, str(bad))
    from patchguard.runtime.backends import open_backend

    with pytest.raises(PatchGuardError, match="metadata says 3 channels") as info:
        open_backend(bad)
    assert "\n" not in str(info.value)


def test_onnxruntime_errors_at_run_time_are_one_line(default_onnx: Path, tmp_path: Path,
                                                    photo: Path) -> None:
    """An ONNX whose graph allocates a huge ConstantOfShape: onnxruntime fails at the first
    frame; the error names the file and the cause, on one line."""
    pytest.importorskip("onnx")
    bad = with_huge_constant(default_onnx, tmp_path / "bomb.onnx")
    from patchguard.runtime.cli.run import main

    line = one_error(invoke(main, ["--engine", str(bad), "--source", str(photo)]), "bomb.onnx")
    assert len(line) < 600


def test_garbage_checkpoint_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from patchguard.export.cli import main as export_main
    from patchguard.models.cli import attack_main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"q\x00garbage")
    one_error(invoke(export_main, ["--checkpoint", str(bad), "--out", str(tmp_path / "out")]),
              "not a readable PyTorch file")
    one_error(invoke(attack_main, ["--checkpoint", str(bad)]), "not a readable PyTorch file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--arch", "bagnet17", "--random-init", "--num-classes", "0"], "--num-classes"),
    (["--name", "../x"], "plain file name"),
    (["--name", ".hidden"], "must not start with '.'"),
    (["--calib-data", "fashion-mnist"], "with --int8"),
    (["--int8-flavor", "cpu"], "with --int8"),
])
def test_export_flag_mistakes(tmp_path: Path, args: list[str], fragment: str) -> None:
    pytest.importorskip("torch")
    from patchguard.export.cli import main

    out = tmp_path / "out"
    one_error(invoke(main, [*args, "--out", str(out)]), fragment)
    assert not out.exists()  # nothing created, not even an empty --out


def test_class_names_that_are_not_text(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from patchguard.export.cli import main

    names = tmp_path / "names.txt"
    names.write_bytes(bytes(range(256)) * 4)
    one_error(invoke(main, ["--class-names", str(names), "--out", str(tmp_path / "out")]), "UTF-8")


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--limit", "0"], "--limit"),
])
def test_train_flag_mistakes(tmp_path: Path, args: list[str], fragment: str) -> None:
    pytest.importorskip("torch")
    from patchguard.models.cli import train_main

    one_error(invoke(train_main, [*args, "--out", str(tmp_path / "run")]), fragment)
    assert not (tmp_path / "run").exists()


def test_unwritable_json_is_refused_before_the_work(tmp_path: Path) -> None:
    from patchguard.runtime.cli.certify import main

    logits = tmp_path / "u.npy"
    np.save(logits, np.random.default_rng(0).normal(size=(3, 6, 6, 4)).astype(np.float32))
    before = logits.read_bytes()
    one_error(invoke(main, ["--logits", str(logits), "--window", "2", "--json", "/proc/x.json"]),
              "cannot write into /proc")
    one_error(invoke(main, ["--logits", str(logits), "--window", "2", "--json", str(logits)]),
              "same file as --logits")
    assert logits.read_bytes() == before


def test_attack_json_in_proc_is_refused_before_the_attack() -> None:
    pytest.importorskip("torch")
    from patchguard.models.cli import attack_main

    one_error(invoke(attack_main, ["--limit", "1", "--json", "/proc/x.json"]), "cannot write into /proc")


def test_plot_without_matplotlib_fails_before_inference(default_onnx: Path, tmp_path: Path) -> None:
    done = in_process("patchguard.runtime.cli.certify", "main", "--engine", str(default_onnx),
                      "--data", "fashion-mnist", "--patch-size", "2", "--plot",
                      str(tmp_path / "p.png"), block=("matplotlib",))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "matplotlib" in done.stderr and "Traceback" not in done.stderr
    assert "inference" not in done.stderr  # no progress of a run that would be thrown away


# -- metadata, field by field ---------------------------------------------------------------

METADATA_CASES = {
    "stride 0": ({"stride": 0}, "stride must be"),
    "receptive field a string": ({"receptive_field": "5"}, "receptive_field must be"),
    "receptive field null": ({"receptive_field": None}, "receptive_field must be"),
    "receptive field true": ({"receptive_field": True}, "receptive_field must be"),
    "receptive field larger than the input": ({"receptive_field": 29}, "receptive_field must be"),
    "default patch 1e9": ({"default_patch_px": 1000000000}, "default_patch_px must be"),
    "class names a string": ({"class_names": "abcdefghij"}, "class_names must be a list"),
    "a million classes": ({"num_classes": 1000000}, "num_classes must be"),
    "input size 100000": ({"input_size": [100000, 100000]}, "input_size must be"),
    "two bad fields": ({"stride": 0, "std": [0]}, "std must be"),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_metadata_is_validated_field_by_field(default_onnx: Path, tmp_path: Path, photo: Path,
                                             case: str) -> None:
    onnx = pytest.importorskip("onnx")
    change, fragment = METADATA_CASES[case]
    model = onnx.load(str(default_onnx))
    for prop in model.metadata_props:
        if prop.key == "patchguard":
            record = json.loads(prop.value)
            record.update(change)
            record.pop("map_size", None)  # so each field's own check speaks
            prop.value = json.dumps(record)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    from patchguard.runtime.cli.run import main

    line = one_error(invoke(main, ["--engine", str(bad), "--source", str(photo)]), "model metadata", fragment)
    if case == "two bad fields":
        assert "stride must be" in line  # every bad field named, on the one line


def test_a_checkpoint_asking_for_huge_layers_is_one_line(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from patchguard.export.cli import main
    from patchguard.models import record_for

    record = record_for("smallbagnet").to_dict()
    record["config"] = {"spatial": [[3, 1, 1000000], [3, 1, 1000000]], "pointwise": [128]}
    checkpoint = tmp_path / "huge.pt"
    torch.save({"format": "patchguard-edge", "record": record, "state_dict": {}}, checkpoint)
    one_error(invoke(main, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]),
              "parameters", "memory budget")
    assert not (tmp_path / "out").exists()
