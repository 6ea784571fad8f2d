"""Training with feature masking (PatchGuard's provable adversarial training).

Each step removes the strongest window of the true class's clipped evidence
(the window a patch of ``patch_px`` pixels would corrupt) before the
cross-entropy, so the model learns to keep enough evidence outside any one
window. A checkpoint is written after every epoch (``last.pt``, resumable)
and the final weights with their record (``model.pt``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime.errors import PatchGuardError
from ..runtime.geometry import window_shape
from ..runtime.metadata import ModelRecord
from ..runtime.preprocess import normalize
from .checkpoints import read_checkpoint, save_checkpoint, unwrap
from .reference import double_masked_training_logits, masked_training_logits
from .registry import build_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    patch_px: int = 5
    clip: Optional[float] = None
    seed: int = 0
    eval_limit: int = 1000
    flip: bool = False
    defense: str = "mask"       # "double": train for feature-space double masking
    masks_per_axis: int = 6


@dataclass
class EpochReport:
    epoch: int
    loss: float
    seconds: float
    accuracy: float = math.nan
    certified: float = math.nan
    extra: dict = field(default_factory=dict)


def certified_accuracy(
    model: torch.nn.Module, record: ModelRecord, x: torch.Tensor, y: torch.Tensor,
    patch_px: int, batch_size: int = 500, defense: str = "mask", masks_per_axis: int = 6,
) -> tuple[float, float]:
    """Clean and certified accuracy of ``model`` on (x, y): robust masking or
    feature-space double masking, decided and certified by the runtime's numpy
    defense (the code that deploys the model and that pg-certify reports)."""
    from ..runtime.defenses import certify, predict
    from ..runtime.double_masking import double_masking_certified

    window = window_shape(patch_px, record.receptive_field, record.stride)
    model.eval()
    correct = certified = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            u = model(x[start : start + batch_size]).double().numpy()
            labels = y[start : start + batch_size].numpy()
            if defense == "double":
                found, ok = double_masking_certified(u, window, masks_per_axis=masks_per_axis, labels=labels)
            else:
                found, ok = predict(u, window), certify(u, window, labels=labels)
            correct += int((found == labels).sum())
            certified += int(ok.sum())
    return correct / len(x), certified / len(x)


class TrainingRun:
    """What every training loop here shares: the model, the data as tensors, AdamW with
    a one-cycle schedule, resuming from ``last.pt``, and the per-epoch checkpoints."""

    def __init__(self, record: ModelRecord, images: np.ndarray, labels: np.ndarray, out_dir: Path,
                 config: TrainConfig, init_state: Optional[dict] = None, resume: bool = False) -> None:
        torch.manual_seed(config.seed)
        self.record, self.config, self.out_dir = record, config, out_dir
        self.model = build_model(record)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.x = torch.from_numpy(normalize(images, record))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.steps_per_epoch = math.ceil(len(self.x) / config.batch_size)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=config.epochs * self.steps_per_epoch,
            pct_start=0.15)
        self.start_epoch = 0
        self.last = out_dir / "last.pt"
        if resume:
            if not self.last.exists():
                raise PatchGuardError(f"--resume: no {self.last} to resume from")
            content = read_checkpoint(self.last)
            state, _ = unwrap(content)
            self.model.load_state_dict(state)
            self.optimizer.load_state_dict(content["optimizer"])
            self.schedule.load_state_dict(content["schedule"])
            self.start_epoch = int(content["epoch"])
            log.info("resuming after epoch %d", self.start_epoch)

    def batches(self, order: torch.Tensor,
                flip_generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's (images, labels) batches in ``order``, half of them mirrored with ``config.flip``."""
        size = self.config.batch_size
        for step in range(self.steps_per_epoch):
            idx = order[step * size : (step + 1) * size]
            xb, yb = self.x[idx], self.y[idx]
            if self.config.flip:
                flip = torch.rand(len(xb), generator=flip_generator) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yield xb, yb

    def step(self, loss: torch.Tensor) -> float:
        """One optimiser and schedule step on ``loss``; its value."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return float(loss.item())

    def end_epoch(self, epoch: int) -> None:
        """``last.pt`` (resumable: optimiser, schedule, epoch, config) and ``epochNN.pt``."""
        save_checkpoint(
            self.model, self.record, self.last, extra={
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "epoch": epoch + 1, "config": asdict(self.config),
            },
        )
        save_checkpoint(self.model, self.record, self.out_dir / f"epoch{epoch + 1:02d}.pt")

    def finish(self) -> Path:
        final = self.out_dir / "model.pt"
        save_checkpoint(self.model, self.record, final)
        return final


def train(
    record: ModelRecord,
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    config: TrainConfig,
    eval_data: Optional[tuple[np.ndarray, np.ndarray]] = None,
    init_state: Optional[dict] = None,
    resume: bool = False,
    on_epoch: Optional[Callable[[EpochReport], None]] = None,
    progress: Optional[Callable[[int], Any]] = None,
) -> Path:
    """Train ``record``'s architecture; returns the path of ``model.pt``.

    ``progress(total_steps)`` may return a tqdm-like object with ``update``.
    """
    window = record.window_for(config.patch_px)  # refused before any work
    run = TrainingRun(record, images, labels, out_dir, config, init_state, resume)
    model = run.model
    ev = None
    if eval_data is not None:
        ev = (torch.from_numpy(normalize(eval_data[0], record)), torch.from_numpy(eval_data[1]))
    bar = progress((config.epochs - run.start_epoch) * run.steps_per_epoch) if progress else None
    for epoch in range(run.start_epoch, config.epochs):
        model.train()
        began = time.time()
        order = torch.randperm(len(run.x), generator=torch.Generator().manual_seed(config.seed + epoch))
        total_loss = 0.0
        for xb, yb in run.batches(order):
            if config.defense == "double":
                logits = double_masked_training_logits(model(xb), yb, window, config.masks_per_axis,
                                                       config.clip)
            else:
                logits = masked_training_logits(model(xb), yb, window, config.clip)
            total_loss += run.step(F.cross_entropy(logits, yb))
            if bar is not None:
                bar.update(1)
        report = EpochReport(epoch + 1, total_loss / run.steps_per_epoch, time.time() - began)
        if ev is not None:
            report.accuracy, report.certified = certified_accuracy(
                model, record, *ev, config.patch_px, defense=config.defense,
                masks_per_axis=config.masks_per_axis)
        run.end_epoch(epoch)
        if on_epoch is not None:
            on_epoch(report)
    return run.finish()
