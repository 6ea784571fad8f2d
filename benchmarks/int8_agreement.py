"""INT8 vs fp32 on the Fashion-MNIST test set: prediction, certificate, certified accuracy.

The acceptance check of the calibration stage (issue 5): robust-masking
predictions of the INT8 model agree with fp32 on >= 98% of the test images
and certified accuracy (5x5 patch, the record's default) drops by <= 2
points. Quantizes MODEL (an fp32 ONNX exported by pg-export) with each
flavour asked for, unless --int8 gives a ready INT8 file, and exits 1 when
a flavour misses the bar.

    python benchmarks/int8_agreement.py out/fashion_mnist_bagnet.onnx
    python benchmarks/int8_agreement.py model.onnx --flavor cpu --limit 2000
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import click
import numpy as np

from patchguard.calibration.data import DEFAULT_CALIB_SIZE, FASHION_MNIST
from patchguard.calibration.int8 import FLAVORS
from patchguard.export.agreement import measure
from patchguard.export.pipeline import write_int8
from patchguard.runtime.backends import open_backend
from patchguard.runtime.console import Command
from patchguard.runtime.datasets import load_fashion_mnist
from patchguard.runtime.geometry import window_size
from patchguard.runtime.metadata import ModelRecord
from patchguard.runtime.preprocess import preprocess


def local_logits(model: Path, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, ModelRecord]:
    """Local logits (N, H, W, C) of ``model`` on uint8 frames, and its record."""
    with open_backend(model) as backend:
        record = backend.record
        return backend.infer_all(images, batch, prepare=lambda chunk: preprocess(list(chunk), record)), record


@click.command(cls=Command, epilog="\b\nExamples:\n" + __doc__.split("\n\n")[-1].rstrip())
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--int8", "int8_model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A ready INT8 model to compare (skips quantization).")
@click.option("--flavor", "flavors", multiple=True, type=click.Choice(sorted(FLAVORS)),
              help="Flavour(s) to quantize and compare (default: all).")
@click.option("--calib-data", default=FASHION_MNIST, show_default=True,
              help="Calibration images: a folder or 'fashion-mnist' (its train split).")
@click.option("--calib-size", default=DEFAULT_CALIB_SIZE, show_default=True, type=int,
              help="Calibration images drawn (seeded).")
@click.option("--patch", "patch_px", type=int, help="Patch side in pixels (default: the record's).")
@click.option("--limit", type=int, help="Only the first N test images.")
@click.option("--json", "json_out", is_flag=True, help="Print the reports as JSON.")
def main(model: Path, int8_model: Optional[Path], flavors: tuple[str, ...], calib_data: str,
         calib_size: int, patch_px: Optional[int], limit: Optional[int], json_out: bool) -> None:
    """Compare INT8 and fp32 robust masking on the Fashion-MNIST test set."""
    images, labels = load_fashion_mnist("test")
    if limit:
        images, labels = images[:limit], labels[:limit]
    fp32, record = local_logits(model, images)
    patch = patch_px or record.default_patch_px
    window = window_size(patch, record.receptive_field, record.stride)
    failed = False
    with tempfile.TemporaryDirectory(prefix="pg-int8-agree-") as tmp:
        if int8_model is not None:
            candidates = {"given": int8_model}
        else:
            candidates = {}
            for name in flavors or tuple(FLAVORS):
                out = Path(tmp) / f"{model.name.removesuffix('.onnx')}.int8.onnx"
                start = time.perf_counter()
                candidates[name] = write_int8(model, out.with_name(f"{name}-{out.name}"),
                                              record, calib_data, calib_size, name, Path(tmp))
                click.echo(f"{name}: quantized in {time.perf_counter() - start:.1f} s", err=True)
        for name, path in candidates.items():
            int8, _ = local_logits(path, images)
            agreement = measure(fp32, int8, window, labels=labels)
            shortfall = agreement.shortfall(name, "fp32")
            failed |= shortfall is not None
            if json_out:
                click.echo(json.dumps({**asdict(agreement), "certified_accuracy_drop": agreement.certified_drop,
                                       "flavor": name, "patch_px": patch, "window": window,
                                       "passed": shortfall is None, "shortfall": shortfall}, sort_keys=True))
                continue
            click.echo(
                f"{name}: {agreement.n} images, {patch}px patch (window {window}): "
                f"prediction agreement {100 * agreement.prediction_agreement:.2f}%, "
                f"certificate agreement {100 * agreement.certificate_agreement:.2f}%, "
                f"accuracy {100 * (agreement.accuracy_reference or 0):.2f}% -> "
                f"{100 * (agreement.accuracy_candidate or 0):.2f}%, "
                f"certified accuracy {100 * (agreement.certified_accuracy_reference or 0):.2f}% -> "
                f"{100 * (agreement.certified_accuracy_candidate or 0):.2f}% "
                f"(drop {agreement.certified_drop:.2f} points): "
                f"{'PASS' if shortfall is None else 'FAIL'}"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
