"""Training ordinary classifiers for view defenses (README.md, "View defenses").

One loop for every view defense: each step draws a batch, ablates it the
way the defense will see it at test time (``augment``: PatchCleanser's
random one- and two-mask cutouts here; DS bands and crops plug in the same
way) and minimises the cross-entropy. Seeded; a checkpoint after every epoch
(``last.pt``, resumable with ``resume=True``) and the final ``model.pt``.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.cleanser import DoubleMasking, PixelMaskSet, pixel_mask_set
from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord
from .train import EpochReport, TrainConfig, TrainingRun

log = logging.getLogger(__name__)

# (normalised batch (B, C, H, W), generator) -> the batch as the defense's views look.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# (model, record) -> figures for the epoch report.
Evaluate = Callable[[nn.Module, ModelRecord], dict]


@dataclass(frozen=True)
class ViewRecipe:
    """How one view defense trains its classifier with :func:`train_classifier`:
    the record (defense included), the loop's settings, the views each step
    shows, the per-epoch evaluation, and a line saying what runs."""

    record: ModelRecord
    config: TrainConfig
    augment: Augment
    evaluate: Evaluate | None
    summary: str


def cleanser_recipe(record: ModelRecord, evaluation: tuple[np.ndarray, np.ndarray] | None, *, epochs: int,
                    batch_size: int, lr: float, patch_px: int, flip: bool, seed: int, eval_limit: int,
                    masks_per_axis: int, fill: float) -> ViewRecipe:
    """``pg-train --defense cleanser``: PatchCleanser's recipe on an ordinary classifier."""
    from ..runtime.preprocess import normalize
    from ..runtime.views import ViewDefense

    defense = ViewDefense(kind="cleanser", masks_per_axis=(masks_per_axis, masks_per_axis), fill=fill)
    record = record.replace(defense=defense, default_patch_px=patch_px)
    masks = cleanser_masks(record, patch_px)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patch_px=patch_px,
                         seed=seed, eval_limit=eval_limit, flip=flip)
    evaluate = None
    if evaluation is not None:
        evaluate = cleanser_evaluate(normalize(evaluation[0], record), evaluation[1], masks, fill)
    summary = (f"{record.arch} for PatchCleanser ({masks.count} masks of {masks.side[0]}x{masks.side[1]} px, "
               f"stride {masks.stride[0]}, {patch_px} px patch)")
    return ViewRecipe(record, config, cleanser_augment(masks, fill), evaluate, summary)


def cleanser_masks(record: ModelRecord, patch_px: int) -> PixelMaskSet:
    """The mask set the record's defense uses against a ``patch_px`` footprint at model size."""
    if record.defense is None or record.defense.kind != "cleanser":
        raise PatchGuardError(f"{record.arch} has no cleanser defense in its record")
    return pixel_mask_set(record.input_size, patch_px, record.defense.masks_per_axis)


def cleanser_augment(masks: PixelMaskSet, fill: float, two_mask_share: float = 0.5) -> Augment:
    """PatchCleanser's training: every image under one random mask of the set, or two."""
    keep = torch.from_numpy(masks.keep)

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(x)
        i = torch.randint(0, masks.count, (n,), generator=generator)
        j = torch.randint(0, masks.count, (n,), generator=generator)
        two = torch.rand(n, generator=generator) < two_mask_share
        j = torch.where(two, j, i)
        kept = (keep[i] & keep[j])[:, None]
        return torch.where(kept, x, torch.full_like(x, fill))

    return augment


def torch_scorer(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``backend.infer``'s face for a PyTorch module (training-time evaluation, parity)."""
    def score(views: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(views))).float().numpy()
    return score


def cleanser_evaluate(x: np.ndarray, y: np.ndarray, masks: PixelMaskSet, fill: float) -> Evaluate:
    """Double-masking accuracy and certified accuracy on (x normalised, y), through the runtime's math."""
    def evaluate(model: nn.Module, record: ModelRecord) -> dict:
        model.eval()
        runner = DoubleMasking(masks, fill, record.num_classes, torch_scorer(model), max_batch=2048)
        correct = certified = 0
        for start in range(0, len(x), 50):
            results, _ = runner.run(x[start : start + 50], labels=y[start : start + 50])
            for result, label in zip(results, y[start : start + 50]):
                correct += int(result.label == label)
                certified += int(bool(result.certified))
        return {"accuracy": correct / len(x), "certified": certified / len(x)}
    return evaluate


def train_classifier(
    record: ModelRecord,
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    config: TrainConfig,
    augment: Augment,
    evaluate: Evaluate | None = None,
    init_state: dict | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Path:
    """Train ``record``'s classifier on ablated views; returns the path of ``model.pt``."""
    run = TrainingRun(record, images, labels, out_dir, config, init_state, resume)
    model = run.model
    bar = progress((config.epochs - run.start_epoch) * run.steps_per_epoch) if progress else None
    for epoch in range(run.start_epoch, config.epochs):
        model.train()
        began = time.time()
        # Per-epoch seeds: a resumed run draws the same batches and masks as an uninterrupted one.
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(run.x), generator=generator)
        total_loss = 0.0
        for xb, yb in run.batches(order, generator):
            total_loss += run.step(F.cross_entropy(model(augment(xb, generator)), yb))
            if bar is not None:
                bar.update(1)
        report = EpochReport(epoch + 1, total_loss / run.steps_per_epoch, time.time() - began)
        if evaluate is not None:
            figures = evaluate(model, record)
            report.accuracy = figures.pop("accuracy", math.nan)
            report.certified = figures.pop("certified", math.nan)
            report.extra = figures
        run.end_epoch(epoch)
        if on_epoch is not None:
            on_epoch(report)
    return run.finish()
