"""INT8 vs fp32 speed in onnxruntime on the CPU: BagNet-17 at 224 px, batch 4.

Issue 5's acceptance: the ``cpu`` flavour runs >= 1.5x faster than fp32.
Exports a randomly initialised BagNet-17 (10 classes) with the project's
exporter, calibrates each flavour asked for on synthetic images (random
PNGs read back through the calibration reader), then times the models
alternately, batch after batch, and prints medians and the ratio. The load
average is printed too: other work on the machine slows both models, not
necessarily equally.

    python benchmarks/int8.py                 # cpu flavour, 15 rounds
    python benchmarks/int8.py --short         # CI: 3 rounds, 4 calibration images
    python benchmarks/int8.py --flavor cpu --flavor tensorrt --rounds 9
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from patchguard.calibration.int8 import FLAVORS
from patchguard.export.pipeline import write_int8
from patchguard.runtime.console import Command
from patchguard.runtime.errors import lazy_import

ACCEPTANCE = 1.5


def export_bagnet17(path: Path) -> Any:
    """Random-init BagNet-17 (10 classes, 224 px) exported by the project's exporter."""
    import torch

    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import build_model, record_for

    torch.manual_seed(0)
    record = record_for("bagnet17", num_classes=10)
    save_onnx(export_onnx(build_model(record).eval(), record), path)
    return record


def synthetic_images(folder: Path, count: int, size: int = 256) -> Path:
    """``count`` random colour PNGs of ``size`` px (cropped and resized like camera frames)."""
    cv2 = lazy_import("cv2", "cpu")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        # Smooth noise: closer to natural image statistics than white noise.
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.resize(small, (size, size)))
    return folder


def session(path: Path, threads: int) -> Any:
    ort = lazy_import("onnxruntime", "cpu")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_facts() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    return f"{name}, {os.cpu_count()} cores, VNNI: {', '.join(vnni) or 'no'}"


@click.command(cls=Command, epilog="\b\nExamples:\n" + __doc__.split("\n\n")[-1].rstrip())
@click.option("--short", is_flag=True, help="CI mode: 3 rounds, 4 calibration images.")
@click.option("--flavor", "flavors", multiple=True, type=click.Choice(sorted(FLAVORS)),
              help="INT8 flavour(s) to time (default: cpu).")
@click.option("--batch", default=4, show_default=True, help="Images per run.")
@click.option("--rounds", type=int, help="Timed runs per model (default 15, --short 3).")
@click.option("--calib-size", type=int, help="Calibration images (default 32, --short 4).")
@click.option("--threads", default=0, show_default=True, help="onnxruntime threads (0: all cores).")
def main(short: bool, flavors: tuple[str, ...], batch: int, rounds: int | None,
         calib_size: int | None, threads: int) -> None:
    """Time fp32 and INT8 BagNet-17 in onnxruntime on the CPU."""
    rounds = rounds or (3 if short else 15)
    calib_size = calib_size or (4 if short else 32)
    flavors = flavors or ("cpu",)
    click.echo(f"machine: {cpu_facts()}; load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="pg-int8-bench-") as tmp:
        folder = Path(tmp)
        fp32 = folder / "bagnet17.onnx"
        start = time.perf_counter()
        record = export_bagnet17(fp32)
        click.echo(f"exported BagNet-17 @224 (random init) in {time.perf_counter() - start:.0f} s")
        images = synthetic_images(folder / "calib", calib_size)
        models = {"fp32": fp32}
        for name in flavors:
            start = time.perf_counter()
            models[name] = write_int8(fp32, folder / f"bagnet17.{name}.int8.onnx", record,
                                      str(images), calib_size, name, folder)
            click.echo(f"{name}: calibrated on {calib_size} images and quantized in "
                       f"{time.perf_counter() - start:.0f} s")
        sessions = {name: session(path, threads) for name, path in models.items()}
        x = np.random.default_rng(1).standard_normal(
            (batch, record.in_channels, *record.input_size)).astype(np.float32)
        feed = {sessions["fp32"].get_inputs()[0].name: x}
        for s in sessions.values():  # warm-up: first runs allocate and pick kernels
            s.run(None, feed)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for index in range(rounds):  # alternate so load changes hit every model alike
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - start)
            click.echo(f"round {index + 1}/{rounds}: " + ", ".join(
                f"{name} {1000 * t[-1]:.0f} ms" for name, t in times.items()), err=True)
    base = statistics.median(times["fp32"])
    click.echo(f"batch {batch}, {rounds} alternating rounds, median per batch:")
    for name, values in times.items():
        ratio = base / statistics.median(values)
        verdict = "" if name == "fp32" else (
            f"  {'meets' if ratio >= ACCEPTANCE else 'misses'} the {ACCEPTANCE}x bar"
            if name == "cpu" else "")
        click.echo(f"  {name:9s} {1000 * statistics.median(values):8.1f} ms  "
                   f"(min {1000 * min(values):.1f})  {ratio:.2f}x fp32{verdict}")
    click.echo(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
