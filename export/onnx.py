"""PyTorch BagNet -> ONNX: local logits with a dynamic batch axis.

An ordinary classifier run by a view defense (its record has a ``defense``
entry) exports the same way with logits (B, K) out: the view defense needs
no locality, so nothing about its receptive field is claimed or probed.

The exported graph maps float32 (B, C, H, W) to the local logits u, float32
(B, H', W', K), with H' = floor((H - r) / s) + 1. The batch axis stays
symbolic; the spatial size is fixed per export (``--input-size``): the
residual crop in ``models/bagnet.py`` (``crop_to``) slices to the block
output's static size, so every shape-dependent line traces to constants and
only the batch axis is left free.

torch 2.14's ``torch.export``-based exporter (``dynamo=True``) is used: it
keeps the output's spatial axes static, where the TorchScript exporter leaves
them symbolic. The TorchScript exporter remains as a fallback when the first
one fails. Both fold BatchNorm in eval mode today; :func:`.bnfold.fold_batchnorm`
runs after either so that no BatchNormalization reaches the fp16 / int8 /
TensorRT steps whatever the exporter does (TensorRT 10.3, JetPack 6's, may not
parse one in a strongly typed fp16 graph).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord
from .bnfold import fold_batchnorm
from .onnxfile import INPUT_NAME, check_layout, onnx_module, output_name, set_record

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18
# The traced example batch: 2, not 1, so torch.export does not specialise the axis to 1.
_EXAMPLE_BATCH = 2


# Loggers of the exporter's graph passes: they report every rewrite at INFO.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")


@contextlib.contextmanager
def _quiet_exporter():
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter; failures still raise
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example(record: ModelRecord) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(_EXAMPLE_BATCH, record.model_channels, *record.input_size, generator=generator)


def _dynamo_export(model: nn.Module, example: torch.Tensor, opset: int, output: str) -> Any:
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model, (example,), None, input_names=[INPUT_NAME], output_names=[output],
        dynamic_shapes=({0: batch},), dynamo=True, opset_version=opset, verbose=False,
    )
    if program is None:  # only with dynamo=False
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _torchscript_export(model: nn.Module, example: torch.Tensor, opset: int, output: str) -> Any:
    import io

    onnx = onnx_module()
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer,  # type: ignore[arg-type]  # a file object works; the annotation is narrower
        input_names=[INPUT_NAME], output_names=[output],
        dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
        dynamo=False, opset_version=opset,
    )
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(model: nn.Module, record: ModelRecord, opset: int = DEFAULT_OPSET) -> Any:
    """Trace ``model`` to an ``onnx.ModelProto`` labelled with ``record``.

    The model is put in eval mode (BatchNorm uses its running statistics).
    """
    model = model.eval()
    example = _example(record)
    with torch.no_grad():
        try:
            out = model(example)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise PatchGuardError(
                f"{record.arch} does not run on {record.model_channels}x{record.input_size[0]}x"
                f"{record.input_size[1]} inputs: {first}"
            ) from None
    # Rank only for a BagNet: a map of the wrong size is the probe's to refuse, with its reasons.
    expected = (_EXAMPLE_BATCH, *record.output_shape)
    if out.ndim != len(expected) or out.shape[0] != _EXAMPLE_BATCH or (
            not record.is_local and tuple(out.shape) != expected):
        what = "local logits (B, H, W, C)" if record.is_local else f"logits (B, {record.num_classes})"
        raise PatchGuardError(f"{record.arch} returns {tuple(out.shape)}, not {what}")
    output = output_name(record)
    with _quiet_exporter(), torch.no_grad():
        try:
            proto = _dynamo_export(model, example, opset, output)
        except Exception as exc:  # the exporter raises many kinds; fall back once
            log.info("torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                     str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            proto = _torchscript_export(model, example, opset, output)
    proto = fold_batchnorm(proto)
    proto.doc_string = (f"{record.arch}: local logits (B, H, W, C) of a BagNet, PatchGuard-ready"
                        if record.is_local else
                        f"{record.arch}: logits (B, C) of a classifier for the {record.defense_kind} defense")
    check_layout(proto, record)
    return set_record(proto, record)


def torch_reference(model: nn.Module, batch: int = 8) -> Callable[[np.ndarray], np.ndarray]:
    """``inputs (N, C, H, W) float32 -> outputs`` (local logits or logits) of the PyTorch model."""
    model = model.eval()

    def run(inputs: np.ndarray) -> np.ndarray:
        chunks = []
        with torch.no_grad():
            for i in range(0, len(inputs), batch):
                chunks.append(model(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch]))).numpy())
        return np.concatenate(chunks).astype(np.float32)

    return run
