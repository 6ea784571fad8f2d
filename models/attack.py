"""Empirical patch attack on the defended PyTorch model (pg-attack).

PGD on the pixels of a (ph, pw) patch, in [0, 1] pixel space before the
record's mean/std normalisation, against what is deployed: robust masking
(PatchGuard Alg. 1) with the mask window (a, b) of the patch size. The
attacker minimises the margin ``e_y - max_{c != y} e_c`` of the masked
evidence e (B, C); a label is broken when the masked prediction changes.

Every position on a strided grid is attacked, then the neighbourhoods of the
best grid positions are refined (warm-started from the best patch found).

Speed comes from the BagNet's locality: a patch at pixel (i, j) changes only
the cells whose r x r field touches it, a block of at most (a, b) cells, so a
candidate position re-runs the model on the ((a-1) s + r) x ((b-1) s + r)
pixel crop that feeds that block and pastes the block into the clean local
logits u (H, W, C). A self-check confirms that crops reproduce the clean
cells (a model with padding would not), and every success found on crops is
confirmed on the full image before it counts.

Certified labels (Alg. 2) cannot be broken by any patch in the threat model;
a certified image that the attack breaks is a bug in the certificate.
"""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from ..runtime.defenses import certify
from ..runtime.errors import PatchGuardError
from ..runtime.geometry import IntOrPair, Pair, as_pair, first_cell, flush_starts
from ..runtime.metadata import ModelRecord
from . import reference

log = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """What the attack did to one image."""

    MISCLASSIFIED = "misclassified"  # the clean masked prediction is already wrong: not attacked
    BROKEN = "broken"  # a patch changed the masked prediction
    HELD = "held"  # no patch found that changes it


@dataclass(frozen=True)
class AttackConfig:
    """PGD settings. ``stride`` spaces the grid of patch positions (1: every
    position); ``refine`` best grid positions per image get their
    neighbourhood attacked too; ``thres`` T and ``clip`` c_h as deployed."""

    patch_px: IntOrPair = 5
    steps: int = 10
    stride: int = 3
    refine: int = 2
    thres: float = 0.0
    clip: Optional[float] = None
    seed: int = 0
    batch_jobs: int = 1024  # crops per forward pass

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise PatchGuardError(f"--steps must be at least 1, got {self.steps}")
        if self.stride < 1:
            raise PatchGuardError(f"--stride must be at least 1, got {self.stride}")
        if self.refine < 0:
            raise PatchGuardError(f"refine must be >= 0, got {self.refine}")
        if not 0.0 <= self.thres < 1.0:
            raise PatchGuardError(f"--thres must be in [0, 1), got {self.thres}")
        if self.clip is not None and not self.clip > 0:
            raise PatchGuardError(f"--clip must be positive, got {self.clip}")


@dataclass
class ImageResult:
    """One image: the clean masked prediction, its certificate and the attack's best try."""

    index: int
    label: int
    clean_prediction: int
    certified: bool
    outcome: Outcome
    prediction: int  # masked prediction under the best patch found (clean one if not attacked)
    margin: float = math.nan  # lowest margin e_y - max e_c found (< 0: broken)
    position: Optional[Pair] = None  # top-left pixel of the best patch
    patch: Optional[np.ndarray] = field(default=None, repr=False)  # (C, ph, pw) in [0, 1]


class Targets(NamedTuple):
    """Images under attack (N, C, Hpx, Wpx) in [0, 1], their clean local logits
    u (N, H, W, C) and their true labels (N,)."""

    images: torch.Tensor
    u_clean: torch.Tensor
    labels: torch.Tensor


class PatchAttack:
    """PGD patch attack on ``model`` (local logits (B, H, W, C)) defended by robust masking.

    ``images`` everywhere are float pixels in [0, 1], shape (N, C, Hpx, Wpx).
    """

    def __init__(self, model: nn.Module, record: ModelRecord, config: AttackConfig) -> None:
        self.model = model.eval()
        self.search_model = _fold_batchnorm(self.model)
        self.record = record
        self.config = config
        self.patch = as_pair(config.patch_px, "patch size")
        self.map_size = record.map_size
        height, width = record.input_size
        if self.patch[0] > height or self.patch[1] > width:
            raise PatchGuardError(
                f"a {self.patch[0]}x{self.patch[1]} patch does not fit the {height}x{width} input"
            )
        self.window = record.window_for(self.patch)
        # Block of cells re-computed per position and the pixel crop that feeds it.
        self.block = (min(self.window[0], self.map_size[0]), min(self.window[1], self.map_size[1]))
        r, s = record.receptive_field, record.stride
        self.crop = ((self.block[0] - 1) * s + r, (self.block[1] - 1) * s + r)
        shape = (1, record.in_channels, 1, 1)
        self.mean = torch.tensor(record.mean, dtype=torch.float32).reshape(shape)
        self.std = torch.tensor(record.std, dtype=torch.float32).reshape(shape)
        self.generator = torch.Generator().manual_seed(config.seed)

    # ----------------------------------------------------------------- pieces
    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def local_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Full-image local logits u (N, H, W, C), no gradient."""
        with torch.no_grad():
            out = [self.model(self.normalize(images[i : i + 256])) for i in range(0, len(images), 256)]
        u = torch.cat(out)
        if tuple(u.shape[1:3]) != tuple(self.map_size):
            raise PatchGuardError(
                f"the model gives {tuple(u.shape[1:3])} cells, its record says {self.map_size}"
            )
        return u

    def _block_start(self, pixel: torch.Tensor, axis: int) -> torch.Tensor:
        """First cell of the block that holds every cell a patch at ``pixel`` touches."""
        first = first_cell(pixel, self.record.receptive_field, self.record.stride)
        return torch.clamp(first, min=0, max=self.map_size[axis] - self.block[axis])

    def margins(self, targets: Targets, owner: torch.Tensor, positions: torch.Tensor,
                patches: torch.Tensor) -> torch.Tensor:
        """Margin e_y - max_{c != y} e_c of the masked evidence for each job (J,).

        ``owner`` (J,) indexes ``targets``; ``positions`` (J, 2) are top-left
        patch pixels; ``patches`` (J, C, ph, pw) in [0, 1]. Differentiable with
        respect to ``patches``.
        """
        images, u_clean, labels = targets
        jobs = len(owner)
        s = self.record.stride
        (bh, bw), (ch, cw), (ph, pw) = self.block, self.crop, self.patch
        top = self._block_start(positions[:, 0], 0)
        left = self._block_start(positions[:, 1], 1)
        rows = (top * s)[:, None] + torch.arange(ch)  # (J, ch) pixel rows of the crop
        cols = (left * s)[:, None] + torch.arange(cw)
        crop = images[owner[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (J, ch, cw, C)
        # Patch pixels in crop coordinates; outside the patch the mask is 0.
        prow = rows - positions[:, :1]
        pcol = cols - positions[:, 1:]
        inside = ((prow >= 0) & (prow < ph))[:, :, None] & ((pcol >= 0) & (pcol < pw))[:, None, :]
        jj = torch.arange(jobs)[:, None, None]
        placed = patches[jj, :, prow.clamp(0, ph - 1)[:, :, None], pcol.clamp(0, pw - 1)[:, None, :]]
        mask = inside[..., None].to(crop.dtype)
        crop = (crop * (1 - mask) + placed * mask).permute(0, 3, 1, 2)
        block = self.search_model(self.normalize(crop))  # (J, bh, bw, C)
        if tuple(block.shape[1:3]) != (bh, bw):
            raise PatchGuardError(
                f"a {ch}x{cw} crop gives {tuple(block.shape[1:3])} cells, expected {(bh, bw)}: "
                "the model does not behave like a BagNet with its record's r and s"
            )
        brow = (top[:, None] + torch.arange(bh))[:, :, None]
        bcol = (left[:, None] + torch.arange(bw))[:, None, :]
        u = u_clean[owner].index_put((jj, brow, bcol), block)
        evidence = reference.masked_evidence(u, self.window, self.config.thres, self.config.clip)
        return reference.margin(evidence, labels[owner])

    def check_locality(self, images: torch.Tensor, u_clean: torch.Tensor) -> None:
        """Crops with the clean pixels as 'patch' must reproduce the clean cells."""
        height, width = self.record.input_size
        (ph, pw) = self.patch
        corners = torch.tensor(
            [[0, 0], [height - ph, width - pw], [(height - ph) // 2, (width - pw) // 3]]
        )
        owner = torch.zeros(len(corners), dtype=torch.long)
        patches = torch.stack([images[0, :, i : i + ph, j : j + pw] for i, j in corners.tolist()])
        labels = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            got = self.margins(Targets(images[:1], u_clean[:1], labels), owner, corners, patches)
            evidence = reference.robust_masking(u_clean[:1], self.window, self.config.thres, self.config.clip)[1]
            want = reference.margin(evidence, labels)
        scale = float(evidence.abs().max()) + 1.0
        if not torch.allclose(got, want.expand_as(got), rtol=1e-4, atol=1e-4 * scale):
            raise PatchGuardError(
                "recomputing a crop does not reproduce the model's clean local logits: "
                "the model is not local the way its record says (padding or global pooling?)"
            )

    # ------------------------------------------------------------------- PGD
    def pgd(self, targets: Targets, owner: torch.Tensor, positions: torch.Tensor, start: torch.Tensor,
            alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sign-gradient descent on the margin from ``start`` patches (J, C, ph, pw).

        Returns the lowest margin seen per job (J,) and its patch. Jobs of an
        image drop out once any job of that image is broken (``alive`` (N,)
        is updated in place).
        """
        best = torch.full((len(owner),), math.inf)
        best_patch = start.clone()
        patch = start.clone()
        steps = self.config.steps
        for step in range(steps + 1):
            active = alive[owner].nonzero().flatten()
            if len(active) == 0:
                break
            for chunk in active.split(self.config.batch_jobs):
                p = patch[chunk].requires_grad_(step < steps)
                margin = self.margins(targets, owner[chunk], positions[chunk], p)
                if step < steps:
                    (grad,) = torch.autograd.grad(margin.sum(), p)
                margin = margin.detach()
                better = margin < best[chunk]
                best[chunk] = torch.where(better, margin, best[chunk])
                best_patch[chunk[better]] = p.detach()[better]
                if step < steps:
                    # Large steps first, fine ones last (the box [0, 1] is the only constraint).
                    alpha = 0.3 * (1 - step / steps) + 0.02
                    patch[chunk] = (p.detach() - alpha * grad.sign()).clamp(0.0, 1.0)
            broken = owner[best < 0].unique()
            alive[broken] = False
        return best, best_patch

    def _random_patches(self, count: int) -> torch.Tensor:
        shape = (count, self.record.in_channels, *self.patch)
        return torch.rand(shape, generator=self.generator)

    def attack_group(self, targets: Targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attack every image of a small group; per image the best (margin, position, patch)."""
        height, width = self.record.input_size
        (ph, pw), stride = self.patch, self.config.stride
        grid_positions = torch.tensor(
            [(i, j) for i in flush_starts(height, ph, stride) for j in flush_starts(width, pw, stride)]
        )
        n, k = len(targets.images), len(grid_positions)
        owner = torch.arange(n).repeat_interleave(k)
        positions = grid_positions.repeat(n, 1)
        alive = torch.ones(n, dtype=torch.bool)
        margin, patches = self.pgd(targets, owner, positions, self._random_patches(len(owner)), alive)
        if self.config.refine and stride > 1 and bool(alive.any()):
            more = self._neighbours(margin.reshape(n, k), grid_positions,
                                    patches.reshape(n, k, *patches.shape[1:]), alive)
            if more is not None:
                r_owner, r_positions, r_start = more
                r_margin, r_patches = self.pgd(targets, r_owner, r_positions, r_start, alive)
                owner = torch.cat([owner, r_owner])
                positions = torch.cat([positions, r_positions])
                margin = torch.cat([margin, r_margin])
                patches = torch.cat([patches, r_patches])
        best_margin = torch.full((n,), math.inf)
        best_job = torch.zeros(n, dtype=torch.long)
        for job in range(len(owner)):
            i = int(owner[job])
            if margin[job] < best_margin[i]:
                best_margin[i], best_job[i] = margin[job], job
        return best_margin, positions[best_job], patches[best_job]

    def _neighbours(
        self, margin: torch.Tensor, grid_positions: torch.Tensor, patches: torch.Tensor, alive: torch.Tensor
    ) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Positions around the ``refine`` best grid positions of each unbroken image,
        warm-started from the best patch found at their grid seed."""
        height, width = self.record.input_size
        (ph, pw), stride = self.patch, self.config.stride
        reach = stride // 2
        owners, positions, starts = [], [], []
        for i in alive.nonzero().flatten().tolist():
            seen = {tuple(p) for p in grid_positions.tolist()}
            for seed in margin[i].argsort()[: self.config.refine].tolist():
                y, x = grid_positions[seed].tolist()
                for dy in range(-reach, reach + 1):
                    for dx in range(-reach, reach + 1):
                        pos = (y + dy, x + dx)
                        if pos in seen or not (0 <= pos[0] <= height - ph and 0 <= pos[1] <= width - pw):
                            continue
                        seen.add(pos)
                        owners.append(i)
                        positions.append(pos)
                        starts.append(patches[i, seed])
        if not owners:
            return None
        return torch.tensor(owners), torch.tensor(positions), torch.stack(starts)

    # ------------------------------------------------------------------ whole
    def paste(self, images: torch.Tensor, positions: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        ph, pw = self.patch
        for k, (i, j) in enumerate(positions.tolist()):
            out[k, :, i : i + ph, j : j + pw] = patches[k]
        return out

    def run(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        group: int = 8,
        on_progress: Optional[Callable[[int], None]] = None,
    ) -> list[ImageResult]:
        """Certify and attack ``images`` (N, C, Hpx, Wpx) float in [0, 1] with true ``labels`` (N,)."""
        x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        expected = (self.record.in_channels, *self.record.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise PatchGuardError(
                f"images must be (N, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}")
        if len(x) == 0:
            raise PatchGuardError("no images to attack")
        # Only the patch needs gradients; skipping the weights' halves the backward pass.
        models = {id(m): m for m in (self.model, self.search_model)}.values()
        flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
        for param, _ in flags:
            param.requires_grad_(False)
        try:
            return self._run(x, y, group, on_progress)
        finally:
            for param, flag in flags:
                param.requires_grad_(flag)

    def _run(
        self, x: torch.Tensor, y: torch.Tensor, group: int, on_progress: Optional[Callable[[int], None]]
    ) -> list[ImageResult]:
        u = self.local_logits(x)
        self.check_locality(x, u)
        clean = reference.robust_masking(u, self.window, self.config.thres, self.config.clip)[0]
        certified = certify(u.double().numpy(), self.window, labels=y.numpy(),
                            thres=self.config.thres, clip=self.config.clip)
        results = [
            ImageResult(i, int(y[i]), int(clean[i]), bool(certified[i]), Outcome.MISCLASSIFIED, int(clean[i]))
            for i in range(len(x))
        ]
        targets = (clean == y).nonzero().flatten()
        if on_progress is not None and len(x) - len(targets):
            on_progress(len(x) - len(targets))
        for chunk in targets.split(group):
            margin, positions, patches = self.attack_group(Targets(x[chunk], u[chunk], y[chunk]))
            patched = self.paste(x[chunk], positions, patches)
            after = reference.robust_masking(
                self.local_logits(patched), self.window, self.config.thres, self.config.clip
            )[0]
            for k, index in enumerate(chunk.tolist()):
                broken = bool(after[k] != y[index])
                if bool(margin[k] < 0) and not broken:
                    log.warning("image %d: the crop said broken (margin %.3g), the full image disagrees",
                                index, float(margin[k]))
                result = results[index]
                result.outcome = Outcome.BROKEN if broken else Outcome.HELD
                result.prediction = int(after[k])
                result.margin = float(margin[k])
                result.position = tuple(positions[k].tolist())
                result.patch = patches[k].numpy()
                if broken and result.certified:
                    log.error("CERTIFIED IMAGE %d BROKEN: label %d -> %d with a patch at %s",
                              index, result.label, result.prediction, result.position)
            if on_progress is not None:
                on_progress(len(chunk))
        return results


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with each BatchNorm folded into its convolution.

    Same function, a third less work per PGD step; the search runs on it,
    every verdict on the original. Models torch.fx cannot trace are used as is.
    """
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model, inplace=False).eval()
    except Exception as exc:  # any tracing failure: fall back to the slower original
        log.debug("BatchNorm folding skipped: %s", exc)
        return model
