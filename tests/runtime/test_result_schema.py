"""The result stream against the JSON Schema shipped in the package, header included."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from patchguard.runtime.cli.run import main
from patchguard.runtime.files import sha256_file
from patchguard.runtime.resultstream import SCHEMA, SCHEMA_FILE, load_schema

jsonschema = pytest.importorskip("jsonschema")
cv2 = pytest.importorskip("cv2")


def validator() -> "jsonschema.protocols.Validator":
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _folder(tmp_path: Path, count: int = 6) -> Path:
    folder = tmp_path / "shots"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:02d}.png"), rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    return folder


def test_schema_ships_in_the_package() -> None:
    import patchguard.runtime

    assert SCHEMA_FILE.parent == Path(patchguard.runtime.__file__).parent and SCHEMA_FILE.is_file()
    assert load_schema()["$defs"]["schema"]["const"] == SCHEMA


def test_pg_run_stream_validates_header_first(default_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(_folder(tmp_path)),
                                       "--jsonl", str(out), "--thres", "0.1", "--patch-size", "6"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    check = validator()
    for line in lines:
        check.validate(line)
    header, frames = lines[0], lines[1:]
    assert header["kind"] == "header" and len(frames) == 6
    assert header["model"]["sha256"] == sha256_file(default_onnx)
    assert header["model"]["record"]["arch"] and header["model"]["format"] == "onnx"
    assert header["defense"]["kind"] == "mask" and header["defense"]["thres"] == 0.1
    assert header["defense"]["clip"] is None and header["defense"]["top_k"] == 1
    assert header["threat"]["patch_size"] == 6 and header["settings"]["source"].endswith("shots")
    assert all(f["schema"] == SCHEMA and f["capture_time"] is None for f in frames)


def test_separate_header_file_and_what_the_schema_refuses(default_onnx: Path, tmp_path: Path) -> None:
    out, head = tmp_path / "rows.jsonl", tmp_path / "header.json"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(_folder(tmp_path, 2)),
                                       "--jsonl", str(out), "--jsonl-header", str(head)])
    assert result.exit_code == 0, result.output
    check = validator()
    header = json.loads(head.read_text())
    check.validate(header)
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f["kind"] for f in frames] == ["frame", "frame"]
    # The schema is not a rubber stamp: a wrong version, a missing key, a bad type fail.
    broken = [{**frames[0], "schema": "patchguard-edge/result/0"},
              {k: v for k, v in frames[0].items() if k != "certified"},
              {**frames[0], "certified": "yes"},
              {**header, "model": {**header["model"], "sha256": "abc"}}]
    for row in broken:
        assert not check.is_valid(row)
    # Fields the defense issues add (alert, confidence, top-k, views) are accepted.
    check.validate({**frames[0], "alert": True, "confidence": 0.93, "defense": "double",
                    "top_k": {"labels": [1, 3], "scores": [4.5, None], "certified": None}})
    assert not check.is_valid({**frames[0], "top_k": {"labels": [1]}})


def test_defense_fields_of_real_runs_validate(default_onnx: Path, tmp_path: Path) -> None:
    """The per-frame fields the defenses add (double masking, top-k, alert, abstention) are in the schema."""
    check = validator()
    for args in (["--defense", "double", "--top-k", "3"], ["--top-k", "2", "--abstain-below", "0.5"]):
        out = tmp_path / "rows.jsonl"
        result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source",
                                           str(_folder(tmp_path / args[1], 3)), "--jsonl", str(out), *args])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        for line in lines:
            check.validate(line)
        assert lines[0]["defense"]["kind"] == (args[1] if args[0] == "--defense" else "mask")
        assert all("top_k" in f and "alert" in f for f in lines[1:])
