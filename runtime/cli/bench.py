"""pg-bench: where a frame's time goes (preprocess, inference, certification), as percentiles."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

import click
import numpy as np

from ..console import Command, progress
from ..errors import PatchGuardError
from ..geometry import parse_size_flags
from ..limits import MAX_CLASSES, MAX_MAP_CELLS, check_memory, check_side, memory_budget

EXAMPLES = """
\b
Examples:
  pg-bench --model model.onnx --source clip.avi        # real frames, what pg-run sees
  pg-bench --model model.onnx --source drive.mcap --topic /camera/image_raw --budget-ms 33.3
  pg-bench --model model.plan --batch 8 --frame-size 720x1280 --threads 4
  pg-bench --synthetic-map 26x26x1000                    # no model: BagNet-17-like maps
\b
Every stage is reported as mean, p50, p95, p99 and max in milliseconds.
With --source the frames of a video, folder, glob or ROS bag go through the
same Pipeline pg-run uses, and the rows are its per-frame latencies (pre,
infer, certify; frame = their sum): certification costs more on real content
(frames near the decision boundary) than on random frames. Without --source,
random frames of --frame-size are timed stage by stage (the library calls on
their own, and certify_stage, what the pipeline runs per frame);
--synthetic-map skips inference and times that overhead on random local
logits (a BagNet with r=17, s=8 and ImageNet's 224/256 crop), 16 maps from
clearly uncertified to clearly certified.
\b
Reading it against a frame budget (e.g. 33.3 ms at 30 FPS): the p99 of
"frame" must stay under the budget for 99% of frames to be processed in
time; p50 says what a typical frame costs; max shows stalls.
"""

QUANTILES = (50, 95, 99)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """mean, p50, p95, p99 and max of ``samples_ms`` (milliseconds), rounded to µs."""
    values = np.asarray(samples_ms, dtype=np.float64)
    found = {"mean": float(values.mean())}
    found.update({f"p{q}": float(np.percentile(values, q)) for q in QUANTILES})
    found["max"] = float(values.max())
    found["n"] = int(values.size)
    return {k: (round(v, 4) if k != "n" else v) for k, v in found.items()}


def timed(fn: Callable[[Any], Any], inputs: list[Any], iterations: int, warmup: int = 2) -> list[float]:
    """Milliseconds of each ``fn(x)`` over ``iterations`` rounds through ``inputs``.

    Each input is timed alike, so a mix of easy and hard maps weighs evenly.
    """
    for x in inputs[:warmup]:
        fn(x)
    samples = []
    for _ in range(iterations):
        for x in inputs:
            start = time.perf_counter()
            fn(x)
            samples.append((time.perf_counter() - start) * 1e3)
    return samples


def parse_map(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PatchGuardError(f"--synthetic-map must look like 26x26x1000, got {text!r}") from None
    if min(h, w, c) < 1:
        raise PatchGuardError(f"--synthetic-map needs positive sizes, got {text!r}")
    if h * w > MAX_MAP_CELLS or c > MAX_CLASSES:
        raise PatchGuardError(f"--synthetic-map {text}: at most {MAX_MAP_CELLS} cells and "
                              f"{MAX_CLASSES} classes")
    return h, w, c


# Bytes per local-logit value the certify stage holds at once: the float32 map and
# float64 working copies (clipped evidence, integral images, window sums).
CERTIFY_BYTES_PER_VALUE = 4 + 6 * 8


def bench_memory(batch: int, frame: tuple[int, int], record: Any, maps: int) -> float:
    """Rough peak bytes of one stage-by-stage run: the frames, the model input, ``maps``
    batches of local logits and the certify stage's working set for one of them."""
    fw, fh = frame
    values = batch * int(np.prod(record.output_shape))
    model_input = batch * record.in_channels * record.input_size[0] * record.input_size[1] * 4
    return batch * fw * fh * 3 + model_input + maps * values * 4 + values * CERTIFY_BYTES_PER_VALUE


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


def bench_source(pipeline: Any, frames: Any, batch: int, max_frames: Optional[int],
                 warmup: int = 2, color: Optional[str] = None) -> dict[str, Any]:
    """Per-frame latencies of ``pipeline`` over a frame source, as pg-run measures them.

    The first ``warmup`` batches (session start-up, caches) are run but not counted.
    """
    samples: dict[str, list[float]] = {"pre": [], "infer": [], "certify": [], "frame": []}
    certified = counted = seen = 0
    pending: list[Any] = []
    batches = 0

    def flush() -> None:
        nonlocal certified, counted, batches
        results = pipeline.run_batch([item.image for item in pending],
                                     color=color or (pending[0].color if pending else None))
        batches += 1
        if batches <= warmup:
            return
        for r in results:
            for key in ("pre", "infer", "certify"):
                samples[key].append(r.latency_ms[key])
            samples["frame"].append(sum(r.latency_ms[k] for k in ("pre", "infer", "certify")))
            certified += int(r.certified)
            counted += 1

    with progress(frames.length, "frames") as bar:
        for item in frames:
            if pending and item.color != pending[0].color:
                flush()
                pending.clear()
            pending.append(item)
            seen += 1
            bar.update(1)
            if len(pending) == batch:
                flush()
                pending.clear()
            if max_frames is not None and seen >= max_frames:
                break
        if pending:
            flush()
    if counted == 0:
        raise PatchGuardError(f"{frames.description} gave {seen} frames: too few to time after "
                              f"{warmup} warm-up batches of {batch}")
    return {"frames": counted, "warmup_frames": seen - counted,
            "certified_fraction": round(certified / counted, 4),
            "ms_per_frame": {k: percentiles(v) for k, v in samples.items()}}


def _table(rows: dict[str, dict[str, float]], unit: str) -> list[str]:
    lines = [f"  {'stage (' + unit + ')':<24}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"]
    for key, s in rows.items():
        lines.append(f"  {key:<24}{s['mean']:>9.3f}{s['p50']:>9.3f}{s['p95']:>9.3f}{s['p99']:>9.3f}"
                     f"{s['max']:>9.3f}")
    return lines


def _budget_line(frame_ms: dict[str, float], budget_ms: Optional[float]) -> list[str]:
    if budget_ms is None:
        return []
    verdict = "fits" if frame_ms["p99"] <= budget_ms else "EXCEEDS"
    return [f"  budget {budget_ms:.1f} ms/frame: p99 frame {frame_ms['p99']:.2f} ms {verdict} "
            f"(p50 {frame_ms['p50']:.2f} ms, max {frame_ms['max']:.2f} ms)"]


@click.command(cls=Command, epilog=EXAMPLES)
@click.option("--model", "--engine", "engine", type=click.Path(dir_okay=False), default=None,
              help="Model: .onnx or .plan (--engine: the older name).")
@click.option("--source", default=None,
              help="Time real frames: a video, image folder, glob or ROS bag (as pg-run --source).")
@click.option("--topic", default=None, help="Image topic of a ROS bag --source.")
@click.option("--max-frames", type=int, default=None, help="With --source: stop after N frames.")
@click.option("--color", type=click.Choice(["rgb", "bgr"], case_sensitive=False), default=None,
              help="With --source: channel order of the frames [default: as pg-run, the source's own].")
@click.option("--value-range", type=float, nargs=2, default=None, metavar="LO HI",
              help="With --source: map frames that are not uint8 (mono16, float) from LO..HI onto 0..255.")
@click.option("--batch", type=int, default=1, show_default=True, help="Frames per inference call.")
@click.option("--threads", type=int, default=None,
              help="onnxruntime intra-op threads [default: onnxruntime's choice, one per core].")
@click.option("--frame-size", default=None, metavar="HxW",
              help="Random frame size, rows x columns like every size flag (no --source) [default: 480x640].")
@click.option("--frame", "frame_wh", default=None, metavar="WxH",
              help="Older spelling of --frame-size, width first (1280x720 = --frame-size 720x1280).")
@click.option("--synthetic-map", default=None, help="HxWxC: time the overhead without a model.")
@click.option("--patch-size", type=int, default=None,
              help="Patch side in camera pixels (default: the model's patch mapped to the frame).")
@click.option("--iterations", type=int, default=100, show_default=True,
              help="Timed runs per stage (no --source).")
@click.option("--budget-ms", type=float, default=None,
              help="Frame budget in ms (e.g. 33.3 for 30 FPS): say whether p99 fits.")
@click.option("--provider", default=None, help="onnxruntime provider: cpu (default), cuda, tensorrt.")
@click.option("--defense", type=click.Choice(["mask", "double"]), default="mask", show_default=True,
              help="Robust masking or feature-space double masking.")
@click.option("--top-k", type=int, default=1, show_default=True,
              help="Per-frame top-k (and, for mask, its certificate) as pg-run --top-k.")
@click.option("--tau", type=float, default=None, help="Alert threshold of provable detection (default 0.8).")
@click.option("--allow-unverified", is_flag=True,
              help="Time a model whose locality does not prove (its frames are never certified).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures to this JSON file ('-' for stdout only).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Refuse a run estimated to need more, e.g. 4G [default: half the RAM].")
def main(engine: Optional[str], source: Optional[str], topic: Optional[str], max_frames: Optional[int],
         batch: int, threads: Optional[int], frame_size: Optional[str], frame_wh: Optional[str],
         synthetic_map: Optional[str],
         patch_size: Optional[int], iterations: int, budget_ms: Optional[float],
         provider: Optional[str], defense: str, top_k: int, tau: Optional[float],
         allow_unverified: bool,
         json_out: Optional[str], max_memory: Optional[str], color: Optional[str],
         value_range: Optional[tuple[float, float]]) -> None:
    """Time preprocessing, inference and certification: mean, p50, p95, p99, max per stage."""
    from ..detection import DEFAULT_TAU
    from ..files import check_outputs, write_text_atomic
    from ..heap import keep_freed_memory
    from ..readouts import frame_settings

    keep_freed_memory()  # as pg-run: every frame reuses the last one's memory (glibc)

    check_outputs({"--json": json_out}, {"--engine": engine, "--source": source})
    budget = memory_budget(max_memory)
    settings = frame_settings(defense, None, DEFAULT_TAU if tau is None else tau, top_k=top_k)
    if (engine is None) == (synthetic_map is None):
        raise PatchGuardError("give exactly one of --model M or --synthetic-map HxWxC")
    if source is not None and engine is None:
        raise PatchGuardError("--source needs --model (real frames go through the model)")
    if source is None and (color or value_range or topic):
        raise PatchGuardError("--color, --value-range and --topic apply to --source")
    if batch < 1 or iterations < 1:
        raise PatchGuardError("--batch and --iterations must be at least 1")
    if threads is not None and threads < 1:
        raise PatchGuardError(f"--threads must be at least 1, got {threads}")
    if max_frames is not None and max_frames < 1:
        raise PatchGuardError(f"--max-frames must be at least 1, got {max_frames}")
    if budget_ms is not None and not budget_ms > 0:
        raise PatchGuardError(f"--budget-ms must be positive, got {budget_ms}")
    frame = parse_size_flags(frame_size, frame_wh, "--frame-size", "--frame") or (480, 640)
    if source is not None:
        report, lines = _bench_real(engine or "", source, topic, max_frames, batch, threads,
                                    patch_size, provider, budget_ms, settings, allow_unverified,
                                    color, value_range or None)
    else:
        report, lines = _bench_stages(engine, synthetic_map, batch, threads, frame, patch_size,
                                      iterations, provider, budget_ms, settings, budget, allow_unverified)
    if json_out == "-":
        click.echo(json.dumps(report, indent=2))
        return
    click.echo("\n".join(lines))
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=2) + "\n")


def _bench_real(engine: str, source: str, topic: Optional[str], max_frames: Optional[int], batch: int,
                threads: Optional[int], patch_size: Optional[int], provider: Optional[str],
                budget_ms: Optional[float], settings: Any,
                allow_unverified: bool = False, color: Optional[str] = None,
                value_range: Optional[tuple[float, float]] = None) -> tuple[dict[str, Any], list[str]]:
    from ..backends import open_backend
    from ..pipeline import Pipeline
    from ..sources import open_source

    backend = open_backend(engine, provider=provider, threads=threads,
                           allow_unverified=allow_unverified)
    try:
        pipeline = Pipeline(backend, patch_size=patch_size, defense=settings.defense,
                            tau=settings.tau, top_k=settings.top_k,
                            allow_unverified=allow_unverified, value_range=value_range)
        with open_source(source, topic=topic) as frames:
            found = bench_source(pipeline, frames, batch, max_frames, color=color)
            description = frames.description
    finally:
        backend.close()
    stats = found["ms_per_frame"]
    report = {"model": engine, "source": description, "backend": getattr(backend, "name", None),
              "provider": getattr(backend, "provider", None), "threads": threads, "batch": batch,
              **found, "budget_ms": budget_ms,
              "frames_per_second_p50": round(1e3 / stats["frame"]["p50"], 1) if stats["frame"]["p50"] else None,
              "certify_share_p50": round(stats["certify"]["p50"] / stats["frame"]["p50"], 4)
              if stats["frame"]["p50"] else None}
    lines = [f"{engine} on {description}: {found['frames']} frames timed (after "
             f"{found['warmup_frames']} warm-up), batch {batch}, threads {threads or 'default'}, "
             f"certified {100 * found['certified_fraction']:.0f}%"]
    lines += _table(stats, "ms/frame")
    lines.append(f"  p50: {report['frames_per_second_p50']} FPS; certification "
                 f"{100 * (report['certify_share_p50'] or 0):.1f}% of the frame")
    lines += _budget_line(stats["frame"], budget_ms)
    return report, lines


def _bench_views(backend: Any, engine: str, batch: int, threads: Optional[int], frame_size: tuple[int, int],
                 patch_size: Optional[int], iterations: int) -> tuple[dict[str, Any], list[str]]:
    """A view defense (PatchCleanser): first round, double masking as it runs, full certification."""
    from ..footprint import footprint, patch_side
    from ..preprocess import normalize, resize_plan, to_model_image
    from ..smoothing_runners import AllViewsRunner
    from ..views import view_runner

    record = backend.record
    fh, fw = frame_size
    plan = resize_plan((fh, fw), record)
    side = patch_side(plan, record, patch_size)
    runner = view_runner(record, footprint(plan, (side, side)), backend.infer, backend.max_batch)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(fh, fw, 3), dtype=np.uint8) for _ in range(batch)]

    def pre(batch_frames: list[np.ndarray]) -> np.ndarray:
        return normalize(np.stack([to_model_image(f, record) for f in batch_frames]), record)

    x = pre(frames)
    if isinstance(runner, AllViewsRunner):
        return _bench_all_views(backend, runner, engine, batch, threads, (fh, fw), side, iterations,
                                {"preprocess": timed(pre, [frames], iterations)}, x)
    engine_ = getattr(runner, "engine", None)
    rounds = max(3, iterations // 4)
    samples: dict[str, list[float]] = {"preprocess": timed(pre, [frames], iterations)}
    if engine_ is not None:
        samples["first_round"] = timed(engine_.first_round, [x], iterations)
    samples["double_masking"] = timed(runner.run, [x], iterations)
    samples["full_certification"] = timed(runner.run_full, [x], rounds, warmup=1)
    decided = runner.run(x)
    full, _ = runner.run_full(x)
    cpu = {name: _cpu_ms(fn, x, rounds) for name, fn in (
        ("first_round", getattr(engine_, "first_round", None)), ("full_certification", runner.run_full))
        if fn is not None}
    stats = {k: percentiles(v) for k, v in samples.items()}
    # p50: on a shared machine the mean is the scheduler's as much as the model's.
    per_frame = {k: round(s["p50"] / batch, 4) for k, s in stats.items()}
    masks = getattr(runner, "masks", None)
    report = {
        "model": engine, "frames": "random", "defense": record.to_dict()["defense"],
        "backend": getattr(backend, "name", None), "provider": getattr(backend, "provider", None),
        "threads": threads, "batch": batch, "frame_size": [fh, fw], "frame": [fw, fh], "patch_px": side,
        "views": {"first_round": masks.count if masks is not None else None,
                  "double_masking": float(np.mean([r.views for r in decided])),
                  "second_round_ran": float(np.mean([bool(r.details.get("second_round")) for r in decided])),
                  "full_certification": full[0].views},
        "ms_per_frame_p50": per_frame, "percentiles_ms_per_batch": stats,
        "cpu_ms_per_frame": {k: round(v / batch, 4) for k, v in cpu.items()},
    }
    views = report["views"]
    lines = [f"{engine}  {record.defense.kind}, batch {batch}, random {fh}x{fw} (HxW) frames, patch {side} px"
             + (f" -> {masks.count} masks of {masks.side[0]}x{masks.side[1]} model px" if masks else "")]
    lines += _table(stats, "ms/batch")
    if "first_round" in per_frame:
        lines.append(f"  first round ({views['first_round']} views): {per_frame['first_round']:.3f} ms/frame (p50)")
    lines.append(f"  double masking as run ({views['double_masking']:.0f} views/frame, second round on "
                 f"{100 * views['second_round_ran']:.0f}% of these frames): "
                 f"{per_frame['double_masking']:.3f} ms/frame (p50)")
    lines.append(f"  full certification ({views['full_certification']} views): "
                 f"{per_frame['full_certification']:.3f} ms/frame (p50)")
    lines.append("  CPU time of this process per frame (what it costs on an idle machine with these "
                 "threads): " + ", ".join(f"{k} {v / batch:.3f} ms" for k, v in cpu.items()))
    lines.append("  random frames: use --source for pg-run's per-frame latencies on real content")
    return report, lines


def _bench_all_views(backend: Any, runner: Any, engine: str, batch: int, threads: Optional[int],
                     frame_size: tuple[int, int], side: int, iterations: int, samples: dict[str, list[float]],
                     x: np.ndarray) -> tuple[dict[str, Any], list[str]]:
    """DS, Mask-DS, crop voting: generate every view, score them as one batch, then each rule that
    reads those views decides and certifies (the rules of one band model side by side)."""
    from ..smoothing_runners import runners_for

    record = runner.record
    views = runner.all_views(x)
    logits = runner.logits(x)
    samples["generate_views"] = timed(runner.all_views, [x], iterations)
    samples["score_views"] = timed(runner.score, [views], iterations)
    rules = runners_for(record, runner.patch, runner.score, runner.max_batch)
    for name, rule in rules.items():
        samples[f"certify_{name}"] = timed(rule.decide, [logits], iterations)
    stats = {k: percentiles(v) for k, v in samples.items()}
    per_frame = {k: round(s["p50"] / batch, 4) for k, s in stats.items()}
    made = per_frame["generate_views"] + per_frame["score_views"]
    report = {
        "model": engine, "frames": "random", "defense": record.to_dict()["defense"],
        "backend": getattr(backend, "name", None), "provider": getattr(backend, "provider", None),
        "threads": threads,
        "batch": batch, "frame": [frame_size[1], frame_size[0]], "patch_px": side,
        "views_per_frame": runner.views_per_frame, "ms_per_frame_p50": per_frame,
        "generate_and_score_ms_per_frame_p50": round(made, 4), "percentiles_ms_per_batch": stats,
    }
    lines = [f"{engine}  {record.defense.kind}, batch {batch}, random {frame_size[1]}x{frame_size[0]} frames, "
             f"patch {side} px, {runner.views_per_frame} views per frame"]
    lines += _table(stats, "ms/batch")
    lines.append(f"  {runner.views_per_frame} views generated and scored: {made:.3f} ms/frame (p50)")
    for name in rules:
        lines.append(f"  {name} decision + certificate: {per_frame[f'certify_{name}']:.3f} ms/frame (p50)")
    lines.append("  random frames: use --source for pg-run's per-frame latencies on real content")
    return report, lines


def _cpu_ms(fn: Callable[[Any], Any], x: Any, rounds: int) -> float:
    """Median CPU milliseconds (this process, all its threads) of ``fn(x)``."""
    fn(x)
    samples = []
    for _ in range(rounds):
        began = time.process_time()
        fn(x)
        samples.append((time.process_time() - began) * 1e3)
    return float(np.median(samples))


def _bench_stages(engine: Optional[str], synthetic_map: Optional[str], batch: int, threads: Optional[int],
                  frame: tuple[int, int], patch_size: Optional[int], iterations: int, provider: Optional[str],
                  budget_ms: Optional[float], settings: Any, budget: int,
                  allow_unverified: bool = False) -> tuple[dict[str, Any], list[str]]:
    from ..certificate import largest_certified
    from ..defenses import certify, predict
    from ..footprint import camera_threat, patch_side
    from ..geometry import check_fits
    from ..pipeline import certify_maps
    from ..preprocess import normalize, resize_plan, to_model_image
    from ..readouts import double_verdicts, mask_readouts

    fh, fw = frame
    check_side(fh, "--frame-size height")
    check_side(fw, "--frame-size width")
    backend: Any = None
    if engine is not None:
        from ..backends import open_backend

        backend = open_backend(engine, provider=provider, threads=threads,
                               allow_unverified=allow_unverified)
        record = backend.record
        if not record.is_local:
            try:
                return _bench_views(backend, engine, batch, threads, (fh, fw), patch_size, iterations)
            finally:
                backend.close()
    else:
        record = synthetic_record(*parse_map(synthetic_map or ""))
    try:
        check_memory(bench_memory(batch, (fw, fh), record, 1 if backend is not None else 16), budget,
                     f"a batch of {batch} {fh}x{fw} (HxW) frames with {'x'.join(map(str, record.output_shape))} "
                     "outputs")
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, size=(fh, fw, 3), dtype=np.uint8) for _ in range(batch)]
        plan = resize_plan((fh, fw), record)
        threat = camera_threat(plan, record, patch_side(plan, record, patch_size))
        a, b = check_fits(threat.window, record.map_size, f"a {threat.patch_px} px patch in {fh}x{fw} (HxW) frames")

        def pre(batch_frames: list[np.ndarray]) -> np.ndarray:
            return normalize(np.stack([to_model_image(f, record) for f in batch_frames]), record)

        samples: dict[str, list[float]] = {"preprocess": timed(pre, [frames], iterations)}
        if backend is not None:
            x = pre(frames)
            samples["inference"] = timed(backend.infer, [x], iterations)
            maps = [backend.infer(x)]
        else:
            h, w = record.map_size
            maps = synthetic_logits(16, batch, h, w, record.num_classes)
        rounds = max(1, iterations // len(maps))
        window, windows = threat.window, list(threat.patch_windows)
        labelled = [(u, predict(u, window)) for u in maps]
        samples["masking"] = timed(lambda u: predict(u, window), maps, rounds)
        samples["certificate"] = timed(lambda p: certify(p[0], window, labels=p[1]), labelled, rounds)
        samples["certified_patch_size"] = timed(
            lambda p: largest_certified(p[0], window, windows, labels=p[1]), labelled, rounds)
        if settings.defense == "double":
            samples["certify_stage"] = timed(lambda u: double_verdicts(u, window, settings, None),
                                             maps, rounds)
            verdicts = [double_verdicts(u, window, settings, None) for u in maps]
            found = [(v.certified, np.where(v.certified, threat.patch_px, 0)) for v in verdicts]
        else:
            samples["certify_stage"] = timed(lambda u: certify_maps(u, threat, record, 0.0, None),
                                             maps, rounds)
            checked = [(u, certify_maps(u, threat, record, 0.0, None)) for u in maps]
            # alert, top-k, margin, confidence, spread: what pg-run adds to every frame
            samples["readouts"] = timed(
                lambda p: mask_readouts(p[0], window, settings, 0.0, None, p[1].labels), checked, rounds)
            found = [(v.certified, v.certified_patch_px) for _, v in checked]
        u = maps[0]
    finally:
        if backend is not None:
            backend.close()

    stats = {k: percentiles(v) for k, v in samples.items()}
    ms = {k: s["mean"] for k, s in stats.items()}
    per_frame = {k: v / batch for k, v in ms.items()}
    overhead = per_frame["preprocess"] + per_frame["certify_stage"] + per_frame.get("readouts", 0.0)
    frame_ms = overhead + per_frame.get("inference", 0.0)
    report: dict[str, Any] = {
        "model": engine or f"synthetic {synthetic_map}", "frames": "random",
        "backend": getattr(backend, "name", None), "provider": getattr(backend, "provider", None),
        "threads": threads, "batch": batch, "frame_size": [fh, fw], "frame": [fw, fh], "map": list(u.shape[1:]),
        "patch_px": threat.patch_px, "window": [a, b], "patch_sizes_scanned": len(windows),
        "defense": settings.defense, "top_k": settings.top_k, "tau": settings.tau,
        "certified_fraction": float(np.mean([ok for ok, _ in found])),
        "certified_patch_px": sorted({int(p) for _, px in found for p in px}),
        "ms_per_batch": {k: round(v, 4) for k, v in ms.items()},
        "ms_per_frame": {k: round(v, 4) for k, v in per_frame.items()},
        "percentiles_ms_per_batch": stats,
        "overhead_ms_per_frame": round(overhead, 4),
        "frames_per_second": round(1e3 / frame_ms, 1) if frame_ms > 0 else None,
        "certify_share": round((overhead - per_frame["preprocess"]) / frame_ms, 4)
        if frame_ms > 0 else None,
        "budget_ms": budget_ms,
    }
    lines = [f"{report['model']}  batch {batch}, random {fh}x{fw} (HxW) frames, map "
             f"{'x'.join(map(str, u.shape[1:]))}, patch {threat.patch_px} px -> mask {a}x{b} "
             f"({len(windows)} sizes scanned), certified {100 * report['certified_fraction']:.0f}% "
             f"(certified sizes seen: {report['certified_patch_px']} px)"]
    lines += _table(stats, "ms/batch")
    lines.append(f"  overhead (all but inference; {settings.defense}, alert, top-{settings.top_k}, "
                 f"margin, confidence): {overhead:.3f} ms/frame (mean)")
    if "inference" in per_frame:
        lines.append(f"  frame time {frame_ms:.3f} ms ({report['frames_per_second']} FPS); "
                     f"certification share {100 * report['certify_share']:.1f}%")
        lines.append("  random frames understate certification on real content: time real frames "
                     "with --source")
    if budget_ms is not None:
        lines += [f"  budget {budget_ms:.1f} ms/frame: mean frame {frame_ms:.2f} ms "
                  f"{'fits' if frame_ms <= budget_ms else 'EXCEEDS'} (use --source for p99 per frame)"]
    return report, lines
