"""The versioned result stream: what ``pg-run --jsonl`` writes, line by line.

Line 1 is a header (``"kind": "header"``): the schema version, the tool and
its version, the model file with its SHA-256 and record, the defense and its
parameters, the threat model as asked and the settings that change results.
Every later line is one frame (``"kind": "frame"``, :func:`.sinks.frame_row`).
Both carry ``"schema": SCHEMA``. The JSON Schema that defines them ships in
the package (``result.schema.json``, :func:`load_schema`); a test validates
real runs against it. Fields added by defenses (alert, confidence, top-k,
views) are documented there as optional keys.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from .console import DISTRIBUTION, tool_version
from .files import PathText, sha256_file

SCHEMA = "patchguard-edge/result/1"
SCHEMA_FILE = Path(__file__).with_name("result.schema.json")


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of header and frame lines."""
    return dict(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def defense_entry(pipeline: Any) -> dict[str, Any]:
    """The defense a pipeline runs and its parameters.

    BagNet records: ``kind`` "mask" (robust masking) or "double" (feature-space
    double masking, with ``masks_per_axis``), the thresholds ``thres`` (T) and
    ``clip`` (c_h), provable detection's ``tau``, ``top_k`` and the abstention
    thresholds. A view-defense record (PatchCleanser, DS, crops) is reported
    with its record entry's parameters.
    """
    record = pipeline.record
    if not getattr(record, "is_local", True):
        entry = record.to_dict().get("defense")
        return dict(entry) if isinstance(entry, dict) else {"kind": record.defense_kind}
    settings = getattr(pipeline, "settings", None)
    found: dict[str, Any] = {"kind": getattr(settings, "defense", "mask"),
                             "thres": pipeline.thres, "clip": pipeline.clip}
    if settings is not None:
        if settings.defense == "double":
            found["masks_per_axis"] = list(settings.masks_per_axis)
        found.update(tau=settings.tau, top_k=settings.top_k, abstain_below=settings.abstain_below,
                     abstain_spread=settings.abstain_spread)
    return found


def header_row(pipeline: Any, model_path: PathText, command: str,
               settings: dict[str, Any], started: Optional[float] = None) -> dict[str, Any]:
    """The first line of a result stream (see the module docstring)."""
    path = Path(model_path)
    record = pipeline.record
    return {
        "schema": SCHEMA,
        "kind": "header",
        "tool": {"name": DISTRIBUTION, "version": tool_version(), "command": command},
        "model": {"path": str(path), "sha256": sha256_file(path),
                  "format": "tensorrt" if path.suffix.lower() == ".plan" else "onnx",
                  "record": record.to_dict()},
        "defense": defense_entry(pipeline),
        "threat": {"patch_size": pipeline.patch_size, "patch_frac": pipeline.patch_frac,
                   "model_patch_px": int(record.default_patch_px)},
        "settings": settings,
        "started": round(time.time() if started is None else started, 6),
    }
