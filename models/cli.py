"""pg-train: train or fine-tune a BagNet with feature masking, or a classifier for a view defense."""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from ..runtime.console import Command, info, progress
from ..runtime.errors import PatchGuardError, lazy_import
from ..runtime.geometry import parse_pair

EXAMPLES = """
\b
Examples:
  pg-train --data fashion-mnist --out runs/fmnist            # the bundled default's recipe
  pg-train --data fashion-mnist --out runs/fmnist --resume   # continue after an interruption
  pg-train --data fashion-mnist --limit 512 --epochs 1 --out /tmp/smoke
  pg-train --checkpoint model.pt --defense double --epochs 2 --lr 5e-4 --out runs/double
  pg-train --defense cleanser --epochs 20 --out runs/cleanser  # PatchCleanser's CNN (k = 6, 5 px patch)
  pg-train --defense ds --band 8 --epochs 5 --out runs/ds       # (De)randomized Smoothing, column bands
  pg-train --defense crops --crop 8 --crop-stride 4 --out runs/crops
  pg-train --defense cleanser --data photos/ --input-size 64x64 --channels 3 --out runs/mine  # your own classes
"""

# --defense: "mask" and "double" train a BagNet (local logits); view defenses
# ("cleanser", "ds", "crops") an ordinary classifier on the views that defense shows it.
TRAIN_DEFENSES = ("mask", "double", "cleanser", "ds", "crops")
LOCAL_DEFENSES = ("mask", "double")
DEFAULT_ARCH = {"mask": "smallbagnet", "double": "smallbagnet", "cleanser": "cnn", "ds": "cnn", "crops": "cnn"}


@click.command(cls=Command, epilog=EXAMPLES)
@click.option("--data", default="fashion-mnist", show_default=True,
              help="'fashion-mnist' (Debian dataset-fashion-mnist) or an image folder, one sub-folder per class.")
@click.option("--defense", type=click.Choice(TRAIN_DEFENSES), default="mask", show_default=True,
              help="mask: a BagNet with PatchGuard's feature masking; double: a BagNet for feature-space "
                   "double masking (the worst pair of masks); cleanser: an ordinary CNN with "
                   "PatchCleanser's random one- and two-mask cutouts; ds / crops: an ordinary CNN on one "
                   "random band / crop per image in the (x, 1-x) encoding (DS's recipe; Mask-DS uses the "
                   "ds model).")
@click.option("--arch", default=None,
              help="smallbagnet (28x28 images), bagnet9, bagnet17 or bagnet33 for --defense mask; "
                   "cnn for view defenses [default: smallbagnet / cnn].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Start from these weights (fine-tuning); any supported checkpoint layout.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for last.pt (resumable), epochNN.pt and the final model.pt.")
@click.option("--epochs", type=int, default=12, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (one-cycle).")
@click.option("--patch-size", "patch_px", type=int, default=5, show_default=True,
              help="Patch side in model pixels whose window is masked during training.")
@click.option("--clip", type=float, default=None, help="Clipping ceiling c_h of the evidence (default: none).")
@click.option("--flip/--no-flip", default=False, show_default=True, help="Random horizontal flips.")
@click.option("--limit", type=int, default=None, help="Train on the first N images only (smoke tests).")
@click.option("--eval-limit", type=int, default=1000, show_default=True,
              help="Test images certified after each epoch (0: none).")
@click.option("--masks-per-axis", "masks_per_axis", type=int, default=6, show_default=True,
              help="double, cleanser: k masks per axis (k x k masks).")
@click.option("--fill", type=float, default=0.0, show_default=True,
              help="cleanser: value of masked pixels after normalisation (0: the mean colour).")
@click.option("--band", type=int, default=8, show_default=True, help="ds: band width b in columns.")
@click.option("--crop", type=int, default=8, show_default=True, help="crops: crop side c in pixels.")
@click.option("--crop-stride", "crop_stride", type=int, default=4, show_default=True,
              help="crops: stride t of the deployed crop grid (training draws any position).")
@click.option("--theta", type=float, default=0.4, show_default=True,
              help="ds, crops: vote threshold on the softmax (Mask-DS: confidence floor), kept in the record.")
@click.option("--cnn-config", "cnn_config", default=None,
              help='cnn: layout as JSON, e.g. \'{"stem": [3, 2, 24], "stages": [[48, 1, 2], [96, 1, 2]]}\' '
                   "(stem kernel/stride/channels; per stage channels/blocks/stride) [default: per input size].")
@click.option("--input-size", "input_size", default=None,
              help="cnn: model input HxW (or one side), e.g. 64x64 for an image folder; images are "
                   "resized to it [default: 28x28].")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="cnn: 1 (grey) or 3 (RGB, ImageNet's mean and std) input channels [default: 1].")
@click.option("--threads", type=int, default=None,
              help="Torch CPU threads (1 is fastest on a busy machine) [default: torch's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
def train_main(data: str, defense: str, arch: str | None, checkpoint: str | None, out_dir: str,
         epochs: int, batch_size: int, lr: float, patch_px: int, clip: float | None, flip: bool,
         limit: int | None, eval_limit: int, masks_per_axis: int, fill: float, band: int, crop: int,
         crop_stride: int, theta: float, cnn_config: str | None, input_size: str | None,
         channels: str | None, threads: int | None, seed: int, resume: bool) -> None:
    """Train a BagNet with PatchGuard's feature masking (or a view defense's classifier), checkpoints per epoch."""
    torch = lazy_import("torch", "export")
    from ..runtime.files import ensure_dir
    from .checkpoints import load_checkpoint
    from .data import load_training_data
    from .registry import record_for
    from .train import TrainConfig, train

    if epochs < 1 or batch_size < 1:
        raise PatchGuardError("--epochs and --batch-size must be at least 1")
    if not (math.isfinite(lr) and lr > 0):
        raise PatchGuardError(f"--lr must be a positive number, got {lr}")
    if limit is not None and limit < 1:
        raise PatchGuardError(f"--limit must be at least 1, got {limit}")
    if eval_limit < 0:
        raise PatchGuardError(f"--eval-limit must be 0 or more, got {eval_limit}")
    if masks_per_axis < 1:
        raise PatchGuardError(f"--masks-per-axis must be at least 1, got {masks_per_axis}")
    if threads is not None:
        if threads < 1:
            raise PatchGuardError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    arch = arch or DEFAULT_ARCH[defense]
    init_state = None
    if checkpoint:
        model, record = load_checkpoint(checkpoint, arch=None if arch == DEFAULT_ARCH[defense] else arch)
        init_state = model.state_dict()
    else:
        record = record_for(arch)
    for flag, given in (("--cnn-config", cnn_config), ("--input-size", input_size), ("--channels", channels)):
        if given is not None and (checkpoint or record.arch != "cnn"):
            raise PatchGuardError(f"{flag} applies to a fresh --arch cnn only")
    if input_size is not None:
        record = record_for(record, input_size=parse_pair(input_size, "--input-size"))
    if channels == "3":  # the cnn record is grey (1 channel) already
        from .registry import IMAGENET_MEAN, IMAGENET_STD

        record = record.replace(in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if cnn_config is not None:
        record = record.replace(config=_parse_cnn_config(cnn_config))
    local = defense in LOCAL_DEFENSES
    if local != record.is_local:
        raise PatchGuardError(f"--defense {defense} cannot train {record.arch}: "
                              + ("it is not a BagNet" if local else "it is a BagNet; use --arch cnn"))
    (images, labels), evaluation, record = load_training_data(data, record, limit, eval_limit)
    out = Path(ensure_dir(out_dir))
    if not local:
        from .train_views import cleanser_recipe, train_classifier

        if defense in ("ds", "crops"):
            from ..runtime.views import ViewDefense
            from .smoothing import smoothing_recipe

            view = ViewDefense(kind=defense, band=band if defense == "ds" else 0,
                               crop=crop if defense == "crops" else 0,
                               crop_stride=crop_stride if defense == "crops" else 0, theta=theta, encoding="x,1-x")
            recipe = smoothing_recipe(record.replace(defense=view, default_patch_px=patch_px), evaluation,
                                      epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        else:
            recipe = cleanser_recipe(record, evaluation, epochs=epochs, batch_size=batch_size, lr=lr,
                                     patch_px=patch_px, flip=flip, seed=seed, eval_limit=eval_limit,
                                     masks_per_axis=masks_per_axis, fill=fill)
        _fit(f"training {recipe.summary} on {len(images)} images for {epochs} epochs -> {out}",
             lambda bar: train_classifier(
                 recipe.record, images, labels, out, recipe.config, recipe.augment, evaluate=recipe.evaluate,
                 init_state=init_state, resume=resume,
                 on_epoch=_history_writer(out, recipe.evaluate is not None, "accuracy"), progress=bar))
        return
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patch_px=patch_px, clip=clip,
                         seed=seed, eval_limit=eval_limit, flip=flip, defense=defense,
                         masks_per_axis=masks_per_axis)
    accuracy_name = "double_accuracy" if defense == "double" else "mask_accuracy"
    _fit(f"training {record.arch} (r={record.receptive_field}, s={record.stride}) on "
         f"{len(images)} images for {epochs} epochs -> {out}",
         lambda bar: train(record, images, labels, out, config, eval_data=evaluation, init_state=init_state,
                           resume=resume, on_epoch=_history_writer(out, evaluation is not None, accuracy_name),
                           progress=bar))


def _parse_cnn_config(text: str) -> dict:
    try:
        config = json.loads(text)
        stem = [int(v) for v in config["stem"]]
        stages = [[int(v) for v in stage] for stage in config["stages"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise PatchGuardError(f"--cnn-config is not a layout ({exc}); e.g. "
                              '{"stem": [3, 2, 24], "stages": [[48, 1, 2], [96, 1, 2]]}') from None
    if len(stem) != 3 or not stages or any(len(s) != 3 for s in stages) or \
            min(stem + [v for s in stages for v in s]) < 1:
        raise PatchGuardError("--cnn-config: stem is [kernel, stride, channels] and each stage "
                              "[channels, blocks, stride], all at least 1")
    return {"stem": stem, "stages": stages}


def _fit(summary: str, run) -> None:
    """Say what trains, run it with a progress bar (closed however it ends), say where it went."""
    info(summary)
    bars = _Bars()
    try:
        final = run(bars.make)
    finally:
        bars.close()
    click.echo(f"wrote {final}")


class _Bars:
    """The progress bar the trainer asks for, closed whatever happens."""

    def __init__(self) -> None:
        self.bar = None

    def make(self, total: int):
        self.bar = progress(total, "train")
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()



def _history_writer(out: Path, evaluated: bool, accuracy_name: str):
    def on_epoch(report) -> None:
        line = {"epoch": report.epoch, "loss": round(report.loss, 4), "seconds": round(report.seconds, 1)}
        if evaluated:
            line.update({accuracy_name: report.accuracy, "certified": report.certified})
        with open(out / "history.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")
        click.echo(json.dumps(line))
    return on_epoch


ATTACK_EXAMPLES = """
\b
Examples:
  pg-attack --limit 200                                  # bundled default, 5x5 patch
  pg-attack --limit 1000 --patch-size 3 --json attack.json
  pg-attack --checkpoint runs/fmnist/model.pt --stride 1 --steps 20 --limit 50
"""


def _attack_images(data: str, split: str, record, limit: int | None):
    """(N, C, H, W) float pixels in [0, 1] and labels (N,) in dataset order."""
    import numpy as np

    from ..runtime.datasets import load_labelled

    found = load_labelled(data, record, split, limit)
    images, labels = np.asarray(found.images), found.labels
    if images.ndim == 3:
        images = images[..., None]
    if tuple(images.shape[1:3]) != tuple(record.input_size) or images.shape[-1] != record.in_channels:
        raise PatchGuardError(f"images are {images.shape[1:]} but {record.arch} takes "
                              f"{tuple(record.input_size)} x{record.in_channels}")
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, np.asarray(labels)


@click.command(cls=Command, epilog=ATTACK_EXAMPLES)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Model to attack (any supported layout) [default: the bundled Fashion-MNIST BagNet].")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="'fashion-mnist', a folder with its idx files, or an image folder (one sub-folder per class).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="Attack the first N images (dataset order).")
@click.option("--patch-size", "patch_px", type=int, default=None,
              help="Patch side in model pixels [default: the record's default patch].")
@click.option("--steps", type=int, default=10, show_default=True, help="PGD steps per position.")
@click.option("--stride", type=int, default=3, show_default=True,
              help="Grid of patch positions every G px (1: every position); the best are refined.")
@click.option("--refine", type=int, default=2, show_default=True,
              help="Best grid positions per image whose neighbourhood is attacked too.")
@click.option("--thres", type=float, default=0.0, show_default=True, help="Detection threshold T of the defense.")
@click.option("--clip", type=float, default=None, help="Clipping ceiling c_h of the defense (default: none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the report here as JSON.")
def attack_main(checkpoint: str | None, data: str, split: str, limit: int | None,
                patch_px: int | None, steps: int, stride: int, refine: int, thres: float,
                clip: float | None, seed: int, json_out: str | None) -> None:
    """PGD patch attack against the robust-masking defense of a PyTorch BagNet.

    Reports attack success separately on certified and uncertified images.
    A certified image that the attack breaks is a bug in the certificate: the
    command says so and exits with status 2.
    """
    import time

    torch = lazy_import("torch", "export")

    from ..runtime.files import check_outputs, write_text_atomic
    from .attack import AttackConfig, PatchAttack
    from .attack_report import attack_report, broken_certificates_text, report_text
    from .checkpoints import load_checkpoint
    from .registry import DEFAULT_WEIGHTS

    check_outputs({"--json": json_out}, {"--checkpoint": checkpoint})
    if limit is not None and limit < 1:
        raise PatchGuardError(f"--limit must be at least 1, got {limit}")
    torch.manual_seed(seed)
    model, record = load_checkpoint(checkpoint) if checkpoint else DEFAULT_WEIGHTS.load()
    patch = patch_px if patch_px is not None else (record.default_patch_px or None)
    if patch is None:
        raise PatchGuardError(f"{record.arch} has no default patch size; pass --patch-size")
    attack = PatchAttack(model, record, AttackConfig(patch_px=patch, steps=steps, stride=stride,
                                                     refine=refine, thres=thres, clip=clip, seed=seed))
    images, labels = _attack_images(data, split, record, limit)
    began = time.time()
    bar = progress(len(images), "attack")
    try:
        results = attack.run(images, labels, on_progress=bar.update)
    finally:
        bar.close()
    report = {"checkpoint": checkpoint or DEFAULT_WEIGHTS.file_name, "data": data, "split": split,
              **attack_report(results, attack), "seconds": round(time.time() - began, 2)}
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=2) + "\n")
    click.echo(report_text(report))
    bug = broken_certificates_text(report, json_out)
    if bug:
        click.echo(bug, err=True)
        raise SystemExit(2)


if __name__ == "__main__":
    train_main()
