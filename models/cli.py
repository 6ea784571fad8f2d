"""pg-train: train or fine-tune a BagNet with feature masking."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ..runtime.console import Command, progress
from ..runtime.errors import PatchGuardError

EXAMPLES = """
\b
Examples:
  pg-train --data fashion-mnist --out runs/fmnist            # the bundled default's recipe
  pg-train --data fashion-mnist --out runs/fmnist --resume   # continue after an interruption
  pg-train --data fashion-mnist --limit 512 --epochs 1 --out /tmp/smoke
"""


@click.command(cls=Command, epilog=EXAMPLES)
@click.option("--data", default="fashion-mnist", show_default=True,
              help="'fashion-mnist' (Debian dataset-fashion-mnist) or an image folder, one sub-folder per class.")
@click.option("--arch", default="smallbagnet", show_default=True,
              help="smallbagnet (28x28 images), bagnet9, bagnet17 or bagnet33.")
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
def train_main(data: str, arch: str, checkpoint: Optional[str], out_dir: str, epochs: int, batch_size: int,
         lr: float, patch_px: int, clip: Optional[float], flip: bool, limit: Optional[int],
         eval_limit: int, seed: int, resume: bool) -> None:
    """Train a BagNet with PatchGuard's feature masking and write checkpoints per epoch."""
    from ..runtime.files import ensure_dir
    from .checkpoints import load_checkpoint
    from .data import load_training_data
    from .records import record_for
    from .train import TrainConfig, train

    if epochs < 1 or batch_size < 1:
        raise PatchGuardError("--epochs and --batch-size must be at least 1")
    init_state = None
    if checkpoint:
        model, record = load_checkpoint(checkpoint, arch=None if arch == "smallbagnet" else arch)
        init_state = model.state_dict()
    else:
        record = record_for(arch)
    (images, labels), evaluation, record = load_training_data(data, record, limit, eval_limit)
    out = ensure_dir(out_dir)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patch_px=patch_px, clip=clip,
                         seed=seed, eval_limit=eval_limit, flip=flip)
    click.echo(f"training {record.arch} (r={record.receptive_field}, s={record.stride}) on "
               f"{len(images)} images for {epochs} epochs -> {out}", err=True)

    def on_epoch(report) -> None:
        line = {"epoch": report.epoch, "loss": round(report.loss, 4), "seconds": round(report.seconds, 1)}
        if evaluation is not None:
            line.update(mask_accuracy=report.accuracy, certified=report.certified)
        with open(out / "history.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")
        click.echo(json.dumps(line))

    bar = None

    def make_bar(total: int):
        nonlocal bar
        bar = progress(total, "train")
        return bar

    try:
        final = train(record, images, labels, Path(out), config, eval_data=evaluation,
                      init_state=init_state, resume=resume, on_epoch=on_epoch, progress=make_bar)
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"wrote {final}")


if __name__ == "__main__":
    train_main()
