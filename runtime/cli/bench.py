"""pg-bench: where a frame's time goes (preprocess, inference, certification)."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

import click
import numpy as np

from ..console import Command
from ..errors import PatchGuardError

EXAMPLES = """
\b
Examples:
  pg-bench --engine model.onnx                       # batch 1, a 640x480 frame
  pg-bench --engine model.plan --batch 8 --frame 1280x720
  pg-bench --synthetic-map 26x26x1000                # no model: BagNet-17-like maps
\b
Overhead = everything but inference: preprocessing the frame plus the
certify stage (masking, the certificate and the certified patch size, the
masked box), per frame. --synthetic-map skips inference and times that
overhead on random local logits of the given size (a BagNet with r=17,
s=8 and ImageNet's 224/256 centre crop, so the frame's footprint is real),
16 maps from clearly uncertified to clearly certified, timed alike.
The masking / certificate / certified_patch_size rows time the library
calls on their own; certify_stage is what the pipeline runs per frame.
"""


def timed(fn: Callable[[Any], Any], inputs: list[Any], iterations: int, warmup: int = 2) -> float:
    """Mean milliseconds of ``fn(x)`` over ``iterations`` rounds through ``inputs``.

    Each input is timed alike, so a mix of easy and hard maps weighs evenly.
    """
    for x in inputs[:warmup]:
        fn(x)
    samples = []
    for _ in range(iterations):
        for x in inputs:
            start = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - start)
    return float(np.mean(samples)) * 1e3


def parse_map(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PatchGuardError(f"--synthetic-map must look like 26x26x1000, got {text!r}") from None
    if min(h, w, c) < 1:
        raise PatchGuardError(f"--synthetic-map needs positive sizes, got {text!r}")
    return h, w, c


def synthetic_record(h: int, w: int, classes: int) -> Any:
    """A BagNet-17-like record (r=17, s=8, 224/256 crop) whose map is h x w."""
    from ..metadata import ModelRecord

    r, s = 17, 8
    return ModelRecord(arch="synthetic-bagnet17", num_classes=classes,
                       input_size=((h - 1) * s + r + s - 1, (w - 1) * s + r + s - 1),
                       receptive_field=r, stride=s, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), crop_fraction=224 / 256, default_patch_px=32)


def synthetic_logits(count: int, batch: int, h: int, w: int, classes: int,
                     seed: int = 0) -> list[np.ndarray]:
    """``count`` batches of random local logits from clearly uncertified to clearly
    certified: class 0 gets a margin rising from 0.1 to 0.3 across the batches, so
    the certified patch size scan stops early, late and in between."""
    rng = np.random.default_rng(seed)
    maps = []
    for margin in np.linspace(0.1, 0.3, count):
        u = rng.normal(0.0, 1.0, size=(batch, h, w, classes)).astype(np.float32)
        u[..., 0] += np.float32(margin)
        maps.append(u)
    return maps


@click.command(cls=Command, epilog=EXAMPLES)
@click.option("--engine", type=click.Path(dir_okay=False), default=None, help="Model: .onnx or .plan.")
@click.option("--batch", type=int, default=1, show_default=True, help="Frames per inference call.")
@click.option("--frame", default="640x480", show_default=True, help="Camera frame size WxH.")
@click.option("--synthetic-map", default=None, help="HxWxC: time the overhead without a model.")
@click.option("--patch-size", type=int, default=None,
              help="Patch side in camera pixels (default: the model's patch mapped to the frame).")
@click.option("--iterations", type=int, default=100, show_default=True, help="Timed runs per stage.")
@click.option("--provider", default=None, help="onnxruntime provider: cpu (default), cuda, tensorrt.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures to this JSON file.")
def main(engine: Optional[str], batch: int, frame: str, synthetic_map: Optional[str],
         patch_size: Optional[int], iterations: int, provider: Optional[str],
         json_out: Optional[str]) -> None:
    """Time preprocessing, inference and certification; print certification's share."""
    from ..certificate import largest_certified
    from ..defenses import certify, predict
    from ..files import write_text_atomic
    from ..geometry import parse_pair
    from ..pipeline import certify_maps
    from ..preprocess import normalize, resize_plan, to_model_image
    from ..footprint import camera_threat, patch_side

    if (engine is None) == (synthetic_map is None):
        raise PatchGuardError("give exactly one of --engine M or --synthetic-map HxWxC")
    if batch < 1 or iterations < 1:
        raise PatchGuardError("--batch and --iterations must be at least 1")
    fw, fh = parse_pair(frame, "--frame")
    backend: Any = None
    if engine is not None:
        from ..backends import open_backend

        backend = open_backend(engine, provider=provider)
        record = backend.record
    else:
        record = synthetic_record(*parse_map(synthetic_map or ""))
    try:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, size=(fh, fw, 3), dtype=np.uint8) for _ in range(batch)]
        plan = resize_plan((fh, fw), record)
        threat = camera_threat(plan, record, patch_side(plan, record, patch_size))
        a, b = threat.window
        if a > record.map_size[0] or b > record.map_size[1]:
            raise PatchGuardError(f"a {threat.patch_px} px patch needs a {a}x{b} mask, larger than "
                                  f"the {record.map_size[0]}x{record.map_size[1]} map")

        def pre(batch_frames: list[np.ndarray]) -> np.ndarray:
            return normalize(np.stack([to_model_image(f, record) for f in batch_frames]), record)

        ms: dict[str, float] = {"preprocess": timed(pre, [frames], iterations)}
        if backend is not None:
            x = pre(frames)
            ms["inference"] = timed(backend.infer, [x], iterations)
            maps = [backend.infer(x)]
        else:
            maps = synthetic_logits(16, batch, *record.map_size, record.num_classes)
        rounds = max(1, iterations // len(maps))
        window, windows = threat.window, list(threat.patch_windows)
        labelled = [(u, predict(u, window)) for u in maps]
        ms["masking"] = timed(lambda u: predict(u, window), maps, rounds)
        ms["certificate"] = timed(lambda p: certify(p[0], window, labels=p[1]), labelled, rounds)
        ms["certified_patch_size"] = timed(
            lambda p: largest_certified(p[0], window, windows, labels=p[1]), labelled, rounds)
        ms["certify_stage"] = timed(lambda u: certify_maps(u, threat, record, 0.0, None), maps, rounds)
        verdicts = [certify_maps(u, threat, record, 0.0, None) for u in maps]
        u = maps[0]
    finally:
        if backend is not None:
            backend.close()

    per_frame = {k: v / batch for k, v in ms.items()}
    overhead = per_frame["preprocess"] + per_frame["certify_stage"]
    frame_ms = overhead + per_frame.get("inference", 0.0)
    report = {
        "model": engine or f"synthetic {synthetic_map}",
        "backend": getattr(backend, "name", None), "provider": getattr(backend, "provider", None),
        "batch": batch, "frame": [fw, fh], "map": list(u.shape[1:]),
        "patch_px": threat.patch_px, "window": [a, b], "patch_sizes_scanned": len(windows),
        "certified_fraction": float(np.mean([v.certified for v in verdicts])),
        "certified_patch_px": sorted({int(p) for v in verdicts for p in v.certified_patch_px}),
        "ms_per_batch": {k: round(v, 4) for k, v in ms.items()},
        "ms_per_frame": {k: round(v, 4) for k, v in per_frame.items()},
        "overhead_ms_per_frame": round(overhead, 4),
        "frames_per_second": round(1e3 / frame_ms, 1) if frame_ms > 0 else None,
        "certify_share": round(per_frame["certify_stage"] / frame_ms, 4) if frame_ms > 0 else None,
    }
    lines = [f"{report['model']}  batch {batch}, frame {fw}x{fh}, map {'x'.join(map(str, u.shape[1:]))}, "
             f"patch {threat.patch_px} px -> mask {a}x{b} ({len(windows)} sizes scanned), "
             f"certified {100 * report['certified_fraction']:.0f}% "
             f"(certified sizes seen: {report['certified_patch_px']} px)"]
    lines.append(f"  {'stage':<22}{'ms/batch':>10}{'ms/frame':>10}{'frames/s':>10}")
    for key, value in ms.items():
        rate = batch * 1e3 / value if value > 0 else float("inf")
        lines.append(f"  {key:<22}{value:>10.3f}{value / batch:>10.3f}{rate:>10.0f}")
    lines.append(f"  overhead (all but inference): {overhead:.3f} ms/frame")
    if "inference" in per_frame:
        lines.append(f"  frame time {frame_ms:.3f} ms ({report['frames_per_second']} FPS); "
                     f"certification share {100 * report['certify_share']:.1f}%")
    click.echo("\n".join(lines))
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=2) + "\n")
