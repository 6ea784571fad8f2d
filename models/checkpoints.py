"""Checkpoint loading and saving, in the three layouts users bring.

- plain state dicts (official ``bagnet16-105524de.pth.tar``);
- PatchGuard containers: ``model_state_dict`` (ImageNette), ``state_dict``
  (ImageNet) or ``net`` (CIFAR), keys prefixed ``module.``;
- the project's own: ``{"format": "patchguard-edge", "record": ..., "state_dict": ...}``.

Always ``torch.load(..., weights_only=True)``: a checkpoint is a pickle and a
pickle can run code; anything beyond tensors and plain containers is refused.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..runtime.errors import PatchGuardError, first_line
from ..runtime.files import PathText, atomic_path
from ..runtime.geometry import IntOrPair
from ..runtime.metadata import ModelRecord
from .bagnet import VARIANTS
from .registry import build_model, record_for

PROJECT_FORMAT = "patchguard-edge"
CONTAINER_KEYS = ("model_state_dict", "state_dict", "net")
LAYOUTS = ("project", "plain", "model_state_dict", "state_dict", "net")


class CheckpointError(PatchGuardError):
    """A checkpoint cannot be read or does not fit the architecture."""


def read_checkpoint(path: PathText) -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, str(exc)) from None
    except Exception as exc:  # garbage bytes reach the unpickler's internals (IndexError, ...)
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch file: {first_line(exc)}") from None


def _unpickling_error(path: Path, text: str) -> CheckpointError:
    """One line from torch's multi-paragraph weights-only error.

    A forbidden global means the file would import (and maybe run) code: refused.
    Anything else (an unknown opcode, a text file) is simply not a checkpoint.
    Torch's advice to allow-list the global is left out on purpose.
    """
    forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if forbidden:
        return CheckpointError(
            f"checkpoint {path} was refused: it holds more than weights (it would load "
            f"{forbidden.group(1)}, and a pickle that loads code can run it)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1).strip() if detail else (text.strip().splitlines() or ["unknown content"])[0]
    return CheckpointError(f"checkpoint {path} is not a readable PyTorch file: {reason}")


def unwrap(content: Any) -> tuple[dict[str, torch.Tensor], Optional[ModelRecord]]:
    """State dict (without ``module.``) and the record, if the file carries one."""
    record = None
    if isinstance(content, dict) and content.get("format") == PROJECT_FORMAT:
        if not isinstance(content.get("record"), dict):
            raise CheckpointError("checkpoint is marked patchguard-edge but holds no model record")
        record = ModelRecord.from_dict(content["record"])
        content = content.get("state_dict")
    elif isinstance(content, dict):
        for key in CONTAINER_KEYS:
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        raise CheckpointError("checkpoint holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in content.items()}
    return state, record


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    """Tell BagNet-9/17/33 apart by the kernel of each stage's first block."""
    kernels = []
    for stage in range(1, 5):
        weight = state.get(f"layer{stage}.0.conv2.weight")
        if weight is None or weight.ndim != 4:
            raise CheckpointError(
                "cannot tell the architecture from the checkpoint; pass --arch "
                f"(one of {', '.join(sorted(VARIANTS))})"
            )
        kernels.append(int(weight.shape[-1]) == 3)
    for arch, variant in VARIANTS.items():
        if kernels == [bool(k) for k in variant.kernel3]:
            return arch
    raise CheckpointError(f"checkpoint is no known BagNet (3x3 first blocks per stage: {kernels})")


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{label}: {', '.join(keys[:3])}{more}")
    return "; ".join(parts)


def load_checkpoint(
    path: PathText,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    input_size: Optional[IntOrPair] = None,
) -> tuple[nn.Module, ModelRecord]:
    """Load any supported layout into a model in eval mode, with its record.

    ``num_classes`` defaults to the rows of ``fc.weight``; ``arch`` defaults
    to the record in the file, else it is inferred from the kernel shapes.
    """
    state, record = unwrap(read_checkpoint(path))
    fc = state.get("fc.weight")
    found_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None
    if record is None or (arch is not None and arch != record.arch):
        arch = arch or infer_arch(state)
        record = record_for(arch, num_classes=num_classes or found_classes, input_size=input_size)
    elif num_classes is not None or input_size is not None:
        record = record_for(record, num_classes, input_size)
    model = build_model(record)
    problem = _describe_mismatch(model, state)
    if problem:
        raise CheckpointError(f"checkpoint {path} does not fit {record.arch}: {problem}")
    model.load_state_dict(state)
    return model.eval(), record


def save_checkpoint(
    model: nn.Module,
    record: ModelRecord,
    path: PathText,
    layout: str = "project",
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``model`` atomically in ``layout`` (one of :data:`LAYOUTS`)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if layout == "project":
        content: Any = {"format": PROJECT_FORMAT, "record": record.to_dict(), "state_dict": state}
        content.update(extra or {})
    elif layout == "plain":
        content = state
    elif layout in CONTAINER_KEYS:
        content = {layout: {f"module.{k}": v for k, v in state.items()}}
    else:
        raise PatchGuardError(f"unknown checkpoint layout {layout!r}; known: {', '.join(LAYOUTS)}")
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return Path(path)
