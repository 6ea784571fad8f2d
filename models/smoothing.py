"""Training plug-ins for DS (column bands) and crop voting.

DS's recipe (Levine & Feizi 2020): each training image is shown as ONE
view, a band (or a crop) at a uniformly random position, in the (x, 1 - x)
encoding, with plain cross-entropy. The views come from the runtime's own
:func:`~patchguard.runtime.ablation.encode`, so training and deployment
cannot disagree on the encoding. :func:`smoothing_recipe` gives the ``augment`` and ``evaluate`` of
:func:`.train_views.train_classifier`, the one loop for view defenses.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..runtime.ablation import encode, random_band_keep, random_crop_keep, unnormalize
from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord
from ..runtime.views import ViewDefense
from .train import TrainConfig
from .train_views import ViewRecipe


def _defense(record: ModelRecord) -> ViewDefense:
    if record.defense is None or record.defense.kind not in ("ds", "mask-ds", "crops"):
        raise PatchGuardError(f"{record.arch} has no band or crop defense in its record")
    return record.defense


def view_augment(record: ModelRecord) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Normalised batch (B, C, H, W) -> one random band or crop view per image (B, 2C, H, W)."""
    defense = _defense(record)
    height, width = record.input_size

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(x)
        if defense.kind == "crops":
            tops = torch.randint(0, height - defense.crop + 1, (n,), generator=generator).numpy()
            lefts = torch.randint(0, width - defense.crop + 1, (n,), generator=generator).numpy()
            keep = random_crop_keep(record.input_size, defense.crop, tops, lefts)
        else:
            starts = torch.randint(0, width, (n,), generator=generator).numpy()
            keep = random_band_keep(record.input_size, defense.band, starts)
        pixels = unnormalize(x.numpy(), record.mean, record.std)
        return torch.from_numpy(encode(pixels, keep))

    return augment


def view_evaluate(x: np.ndarray, y: np.ndarray, patch_sizes: Sequence[int]
                  ) -> Callable[[nn.Module, ModelRecord], dict]:
    """Clean and certified accuracy through every view (the runtime's runners),
    on normalised images x (N, C, H, W): ``accuracy`` and ``certified`` for
    the largest patch, the rest per patch size (and Mask-DS for band models)."""
    from ..runtime.smoothing_runners import runners_for
    from .train_views import torch_scorer

    def evaluate(model: nn.Module, record: ModelRecord) -> dict:
        model.eval()
        score = torch_scorer(model)
        logits = None
        figures: dict = {}
        for p in sorted(patch_sizes):
            runners = runners_for(record, (p, p), score, 4096)
            if logits is None:  # every runner of a model reads the same views
                first = next(iter(runners.values()))
                logits = np.concatenate([first.logits(x[s : s + 200]) for s in range(0, len(x), 200)])
            for name, runner in runners.items():
                predicted, certified, _ = runner.decide(logits, labels=y)
                figures[f"{name}_accuracy"] = float((predicted == y).mean())
                figures[f"{name}_certified_{p}"] = float(certified.mean())
        main = "crops" if _defense(record).kind == "crops" else "ds"
        figures["accuracy"] = figures[f"{main}_accuracy"]
        figures["certified"] = figures[f"{main}_certified_{max(patch_sizes)}"]
        return figures

    return evaluate


def smoothing_recipe(record: ModelRecord, evaluation: tuple[np.ndarray, np.ndarray] | None, *,
                     epochs: int, batch_size: int, lr: float, seed: int) -> ViewRecipe:
    """``pg-train --defense ds|crops``: DS's recipe for :func:`.train_views.train_classifier`."""
    from ..runtime.preprocess import normalize
    from ..runtime.smoothing_runners import VoteRunner

    defense = _defense(record)
    views = VoteRunner(record, (1, 1), lambda v: v).views_per_frame  # checks band / crop against the image
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patch_px=record.default_patch_px,
                         seed=seed, eval_limit=0 if evaluation is None else len(evaluation[0]))
    evaluate = None
    if evaluation is not None:
        evaluate = view_evaluate(normalize(evaluation[0], record), evaluation[1],
                                 sorted({2, 3, record.default_patch_px}))
    what = f"band {defense.band}" if defense.kind == "ds" else f"crop {defense.crop}, stride {defense.crop_stride}"
    summary = f"{record.arch} for {defense.kind} ({what}, {views} views per image, theta {defense.theta})"
    return ViewRecipe(record, config, view_augment(record), evaluate, summary)
