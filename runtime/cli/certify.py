"""pg-certify: certify precomputed local logits, or evaluate a model on a data set.

Two modes, one command:

- ``--logits X.npy``: local logits (N, H, W, C) a researcher dumped; one
  threat model; per-image predictions and certificates.
- ``--model MODEL --data fashion-mnist|DIR``: run the model on a labelled
  set and report accuracy and certified accuracy per patch size
  (:func:`patchguard.runtime.evaluate.evaluate`, also used by the first mode
  when labels and patch sizes are given, so both give the same numbers).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import click
import numpy as np

from ..console import Command, progress
from ..errors import PatchGuardError, lazy_import
from ..files import atomic_path, write_text_atomic
from ..geometry import Pair, parse_pair, window_shape

EXAMPLES = """
\b
Examples:
  pg-certify --logits feats.npy --labels labels.npy --window 6
  pg-certify --logits feats.npy --patch-size 32 --rf 17 --stride 8 --thres 0.1 --json out.json
  pg-certify --logits feats.npy --window 6x4 --defense vote
  pg-certify --logits feats.npy --labels labels.npy --window 9 --defense double --masks-per-axis 8
  pg-certify --logits feats.npy --labels labels.npy --window 9 --top-k 3
  pg-certify --model model.onnx --data fashion-mnist --patch-size 2 3 5 --json report.json
  pg-certify --model model.onnx --data images/ --patch-size 4 --limit 500 --plot certified.png
  pg-certify --model model.onnx --data fashion-mnist --patch-size 5 --tau 0.6 0.8 --top-k 3
  pg-certify --model cleanser.onnx --data fashion-mnist --patch-size 2 3 5 --dump tables.npz
  pg-certify --model model.onnx --data test.parquet --patch-size 2 3 5 --ray --ray-workers 4
\b
--window is the mask in feature cells (AxB: rows x columns); --patch-size P
(pixels) with --rf R and --stride S derives it. In --model mode the receptive
field and stride come from the model. Several --patch-size values (2 3 5, a
repeated option or a comma list) make an evaluation report per size. The
report also gives feature-space double masking (--masks-per-axis), provable
detection per --tau (certified detection and the clean alert rate) and, with
--top-k K > 1, top-K certified accuracy.
"""

BATCH = 256


@click.command(cls=Command, epilog=EXAMPLES, multi_value=("--patch-size", "--tau"))
@click.option("--logits", type=click.Path(dir_okay=False), default=None,
              help="Local logits (N, H, W, C) as a .npy file.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="True labels (N,) as a .npy file (--logits mode).")
@click.option("--model", "--engine", "engine", type=click.Path(dir_okay=False), default=None,
              help="Exported model (.onnx or .plan) to evaluate on --data (--engine: the older name).")
@click.option("--data", default=None,
              help="fashion-mnist, a folder with one sub-folder per class, or a table: X.npz "
                   "(images, labels), X.npy with X.labels.npy, or X.parquet (image, label columns).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Fashion-MNIST split.")
@click.option("--limit", type=int, default=None, help="Use the first N images only.")
@click.option("--provider", default=None, help="onnxruntime provider: cpu (default), cuda, tensorrt.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the model on Ray Data actors (the [ray] extra): a local Ray cluster, or the "
                   "cluster at ADDRESS (ray://host:10001, auto). Same report as without --ray.")
@click.option("--ray-workers", type=int, default=2, show_default=True,
              help="--ray: actors, one model each (Ray Data's concurrency).")
@click.option("--ray-batch", type=int, default=BATCH, show_default=True,
              help="--ray: images per map_batches call (a multiple of 256 keeps the "
                   "single-process inference batches).")
@click.option("--threads", type=int, default=None,
              help="onnxruntime intra-op threads (--model mode) [default: onnxruntime's choice; "
                   "with --ray: per actor, 1, each actor holding that many CPUs].")
@click.option("--window", "window_text", default=None, help="Mask window in cells: W or AxB.")
@click.option("--patch-size", "patch_sizes", multiple=True,
              help="Patch side(s) in pixels: --patch-size 2 3 5, repeated, or a comma list.")
@click.option("--rf", type=int, default=None, help="Receptive field r of a cell, pixels (--logits mode).")
@click.option("--stride", type=int, default=None, help="Stride s between cells, pixels (--logits mode).")
@click.option("--thres", type=float, default=0.0, show_default=True, help="Detection threshold T in [0, 1).")
@click.option("--clip", type=float, default=None, help="Clipping ceiling c_h (default: none).")
@click.option("--defense", type=click.Choice(["mask", "cbn", "vote", "double"]), default="mask",
              show_default=True, help="Aggregation to certify (--logits mode).")
@click.option("--masks-per-axis", type=int, default=None,
              help="Double masking: masks per axis (default 6; the map size minus the window "
                   "plus 1 gives stride 1).")
@click.option("--tau", "taus", multiple=True,
              help="Provable detection: alert threshold(s) in [0, 1) to report "
                   "(default 0.5 0.7 0.9; --model mode, or --logits with labels and --patch-size).")
@click.option("--top-k", type=int, default=1, show_default=True,
              help="Also certify that the label stays among the K highest masked scores "
                   "(defense mask).")
@click.option("--allow-unverified", is_flag=True,
              help="Evaluate a model whose locality does not prove, for accuracy only: "
                   "every certified figure is 0, with the reason.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the per-image results / the report to this JSON file.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Plot certified accuracy against patch size to this PNG (--model mode).")
@click.option("--save-logits", type=click.Path(dir_okay=False), default=None,
              help="Also save the model's logits (.npy) and labels (.labels.npy) (--model mode).")
@click.option("--dump", type=click.Path(dir_okay=False), default=None,
              help="View defenses (PatchCleanser): score every two-mask view (no early exit) and save "
                   "the prediction tables (N, M, M) per patch size with the labels to this .npz.")
def main(logits: Optional[str], labels: Optional[str], engine: Optional[str], data: Optional[str],
         split: str, limit: Optional[int], provider: Optional[str], window_text: Optional[str],
         patch_sizes: Sequence[str], rf: Optional[int], stride: Optional[int], thres: float,
         clip: Optional[float], defense: str, masks_per_axis: Optional[int], taus: Sequence[str],
         top_k: int, allow_unverified: bool, json_out: Optional[str], plot: Optional[str],
         save_logits: Optional[str], dump: Optional[str], threads: Optional[int],
         ray_address: Optional[str], ray_workers: int, ray_batch: int) -> None:
    """Certify local logits against adversarial patches (PatchGuard robust masking, CBN, vote,
    feature-space double masking; provable detection and top-k in the reports)."""
    from ..files import check_outputs

    sizes = _parse_sizes(patch_sizes)
    extras = _extras(defense, masks_per_axis, taus, top_k)
    # Before any work: no output may overwrite an input, every output folder must be writable.
    check_outputs({"--json": json_out, "--plot": plot, "--save-logits": save_logits,
                   "--save-logits (labels)": _labels_path(save_logits) if save_logits else None},
                  {"--logits": logits, "--labels": labels, "--engine": engine, "--data": data})
    if plot:  # a missing extra fails now, not after the whole inference
        lazy_import("matplotlib", "plot")
    if (logits is None) == (engine is None):
        raise PatchGuardError("give exactly one of --logits X.npy or --model MODEL")
    if logits is not None:
        for flag, value in (("--data", data), ("--plot", plot), ("--save-logits", save_logits),
                            ("--limit", limit), ("--dump", dump), ("--threads", threads),
                            ("--ray", ray_address)):
            if value is not None:
                raise PatchGuardError(f"{flag} belongs to --model mode, not --logits")
        _logits_mode(logits, labels, window_text, sizes, rf, stride, thres, clip, defense, json_out,
                     extras)
    else:
        for flag, value in (("--labels", labels), ("--window", window_text), ("--rf", rf),
                            ("--stride", stride)):
            if value is not None:
                raise PatchGuardError(
                    f"{flag} belongs to --logits mode; --model takes the labels from --data and "
                    "r, s from the model"
                )
        if defense != "mask":
            raise PatchGuardError("--model mode reports every defense; drop --defense")
        if threads is not None and threads < 1:
            raise PatchGuardError(f"--threads must be at least 1, got {threads}")
        _engine_mode(engine or "", data, split, limit, provider, sizes, thres, clip, json_out,
                     plot, save_logits, extras, dump, threads, allow_unverified,
                     (None if ray_address == "local" else ray_address, ray_workers, ray_batch)
                     if ray_address is not None else None)


def _extras(defense: str, masks_per_axis: Optional[int], taus: Sequence[str],
            top_k: int) -> dict[str, Any]:
    """Options of the defenses beyond masking, checked once: EvaluationOptions' fields."""
    from ..detection import check_tau
    from ..double_masking import DEFAULT_MASKS_PER_AXIS
    from ..evaluate import DEFAULT_TAUS
    from ..topk import check_top_k

    if masks_per_axis is not None and masks_per_axis < 1:
        raise PatchGuardError(f"--masks-per-axis must be at least 1, got {masks_per_axis}")
    if top_k > 1 and defense != "mask":
        raise PatchGuardError(f"--top-k applies to --defense mask, not {defense}")
    values: list[float] = []
    for text in taus:
        for part in str(text).split(","):
            try:
                values.append(check_tau(float(part)))
            except ValueError:
                raise PatchGuardError(f"--tau takes numbers in [0, 1), got {part!r}") from None
    return {"masks_per_axis": masks_per_axis or DEFAULT_MASKS_PER_AXIS,
            "taus": tuple(values) or DEFAULT_TAUS, "top_k": check_top_k(top_k)}


# --------------------------------------------------------------------------
# --logits mode.

def _logits_mode(path: str, labels_path: Optional[str], window_text: Optional[str],
                 sizes: list[int], rf: Optional[int], stride: Optional[int], thres: float,
                 clip: Optional[float], defense: str, json_out: Optional[str],
                 extras: dict[str, Any]) -> None:
    from ..certificate import certified_patch_px, summarize
    from ..defenses import certify, predict
    from ..evaluate import EvaluationOptions, evaluate
    from ..masking import check_labels, check_logits, check_params

    u = check_logits(load_npy(path, "logits"))
    thres, clip = check_params(thres, clip)
    y = None
    if labels_path is not None:
        y = check_labels(load_npy(labels_path, "labels"), u.shape[0], u.shape[3])
    window, windows = _threat(window_text, sizes, rf, stride, u.shape)
    per_axis = extras["masks_per_axis"] if defense == "double" else None
    predictions = predict(u, window, defense=defense, thres=thres, clip=clip,
                          masks_per_axis=per_axis)
    safe = np.maximum(predictions, 0)
    certified = certify(u, window, defense=defense, thres=thres, clip=clip,
                        labels=y if y is not None else safe,
                        masks_per_axis=per_axis) & (predictions >= 0)
    top_certified = None
    if extras["top_k"] > 1:
        top_certified = certify(u, window, thres=thres, clip=clip, top_k=extras["top_k"],
                                labels=y if y is not None else safe) & (predictions >= 0)
    summary = summarize(predictions, certified, y)
    report: dict[str, Any] = {
        "logits": str(path), "n": summary.n, "map": list(u.shape[1:3]), "classes": int(u.shape[3]),
        "defense": defense, "window": list(window), "thres": thres, "clip": clip,
        "summary": summary.to_dict(),
    }
    if defense == "double":
        report["masks_per_axis"] = per_axis
    if top_certified is not None:
        report["top_k"] = {"k": extras["top_k"], "certified": int(top_certified.sum()),
                           "certified_fraction": float(top_certified.mean()) if u.shape[0] else 0.0}
    per_px = None
    if defense == "mask" and len(windows) > 1 and rf is not None and stride is not None:
        per_px = certified_patch_px(u, sizes, rf, stride, window, thres=thres, clip=clip,
                                    labels=y if y is not None else safe)
    images = []
    for n in range(u.shape[0]):
        row: dict[str, Any] = {"index": n,
                               "prediction": int(predictions[n]) if predictions[n] >= 0 else None,
                               "certified": bool(certified[n])}
        if y is not None:
            row["label"] = int(y[n])
        if per_px is not None:
            row["certified_patch_px"] = int(per_px[n])
        if top_certified is not None:
            row[f"top{extras['top_k']}_certified"] = bool(top_certified[n])
        images.append(row)
    report["images"] = images
    if y is not None and sizes and rf is not None:
        report["evaluation"] = evaluate(u, y, sizes, EvaluationOptions(
            receptive_field=rf, stride=int(stride or 0), thres=thres, clip=clip, **extras))
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=1) + "\n")
    _print_summary(summary.to_dict(), defense, window, y is not None)
    if top_certified is not None:
        what = "top-{} certified accuracy" if y is not None else "top-{} certified"
        click.echo(f"  {what.format(extras['top_k']):<19} {report['top_k']['certified_fraction']:.4f} "
                   f"({report['top_k']['certified']}/{u.shape[0]})")
    if json_out:
        click.echo(f"per-image results: {json_out}")


def _print_summary(summary: dict[str, Any], defense: str, window: Pair, labelled: bool) -> None:
    n = summary["n"]
    click.echo(f"{n} maps, defense {defense}, window {window[0]}x{window[1]}")
    if labelled:
        click.echo(f"  accuracy            {summary['accuracy']:.4f} ({summary['correct']}/{n})")
        click.echo(f"  certified accuracy  {summary['certified_fraction']:.4f} ({summary['certified']}/{n})")
    else:
        click.echo(f"  certified           {summary['certified_fraction']:.4f} ({summary['certified']}/{n})")
    if summary["no_label"]:
        click.echo(f"  maps with NaN/inf   {summary['no_label']} (no label, never certified)")


def _threat(window_text: Optional[str], sizes: list[int], rf: Optional[int],
            stride: Optional[int], shape: tuple[int, ...]) -> tuple[Pair, list[Pair]]:
    """The mask window and, for several patch sizes, the growing patch windows."""
    from ..masking import check_window

    if window_text is not None:
        if sizes or rf is not None or stride is not None:
            raise PatchGuardError("give either --window or --patch-size with --rf and --stride, not both")
        window = parse_pair(window_text, "window")
        windows = [window]
    else:
        if not sizes or rf is None or stride is None:
            raise PatchGuardError("give --window W (or AxB), or --patch-size P with --rf R and --stride S")
        windows = [window_shape(p, rf, stride) for p in sizes]
        window = windows[-1]
    return check_window(window, shape), windows


def _parse_sizes(values: Sequence[str]) -> list[int]:
    sizes: list[int] = []
    for value in values:
        for part in str(value).split(","):
            try:
                size = int(part)
            except ValueError:
                raise PatchGuardError(f"--patch-size takes pixel counts, got {part!r}") from None
            if size < 1:
                raise PatchGuardError(f"--patch-size must be at least 1 pixel, got {size}")
            sizes.append(size)
    return sorted(set(sizes))


def load_npy(path: str, what: str) -> np.ndarray:
    """A .npy array (no pickles), or a one-line error naming the file."""
    file = Path(path)
    if not file.is_file():
        raise PatchGuardError(f"{what} file {file} does not exist")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PatchGuardError(f"cannot read {file} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise PatchGuardError(f"{file} holds several arrays (.npz); give one .npy array")
    return array


# --------------------------------------------------------------------------
# --model mode.

def _engine_mode(engine: str, data: Optional[str], split: str, limit: Optional[int],
                 provider: Optional[str], sizes: list[int], thres: float, clip: Optional[float],
                 json_out: Optional[str], plot: Optional[str], save_logits: Optional[str],
                 extras: dict[str, Any], dump: Optional[str] = None,
                 threads: Optional[int] = None, allow_unverified: bool = False,
                 ray: Optional[tuple[Optional[str], int, int]] = None) -> None:
    from ..backends import open_backend
    from ..evaluate import EvaluationOptions, evaluate, report_of
    from ..masking import check_params

    if data is None:
        raise PatchGuardError("--model mode needs --data fashion-mnist, a class folder or a table")
    if not sizes:
        raise PatchGuardError("--model mode needs at least one --patch-size")
    if limit is not None and limit < 1:
        raise PatchGuardError(f"--limit must be at least 1, got {limit}")
    thres, clip = check_params(thres, clip)
    with open_backend(engine, provider=provider, threads=threads,
                      allow_unverified=allow_unverified) as backend:
        unverified = backend.unverified
        record = backend.record
        if not record.is_local:
            for flag, value in (("--save-logits", save_logits), ("--plot", plot)):
                if value is not None:
                    raise PatchGuardError(f"{flag} applies to BagNets; {engine} is a "
                                          f"{record.defense_kind} classifier")
            if ray is not None and dump is not None:
                raise PatchGuardError("--dump runs without --ray")
            _views_mode(backend, engine, data, split, limit, sizes, json_out, dump,
                        _on_ray(ray, engine, provider, threads, allow_unverified))
            return
        if dump is not None:
            raise PatchGuardError(f"--dump applies to view defenses; {engine} is a BagNet")
        for size in sizes:  # fail before the (long) inference, not after it
            record.window_for(size)
        options = EvaluationOptions(receptive_field=record.receptive_field, stride=record.stride, thres=thres,
                                    clip=clip, **extras)
        if ray is not None:
            from ..datasets import open_labelled

            columns = _on_ray(ray, engine, provider, threads, allow_unverified)(
                open_labelled(data, record, split, limit), sizes, options, bool(save_logits))
            labels, u = columns.pop("label"), columns.pop("logits", None)
            report = report_of(columns, sizes, options)
        else:
            images, labels = _load_data(data, split, record, limit)
            u = _infer_all(backend, images, record)
            report = evaluate(u, labels, sizes, options)
    if save_logits:
        np_path = Path(save_logits)
        with atomic_path(np_path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, u)
        with atomic_path(_labels_path(save_logits)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, labels)
    report = {"model": str(engine), "data": data, "split": split if data == "fashion-mnist" else None,
              **report}
    if unverified is not None:
        report = labels_only(report, unverified)
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=1) + "\n")
    if plot:
        plot_report(report, plot)
    _print_report(report)


def _on_ray(ray: Optional[tuple[Optional[str], int, int]], engine: str, provider: Optional[str],
            threads: Optional[int], allow_unverified: bool) -> Any:
    """``--ray``: a function (labelled set, sizes, options, keep logits) -> per-image
    columns, run on Ray Data actors (:func:`~..raydata.certify_with_ray`); None without."""
    if ray is None:
        return None
    from ..raydata import certify_with_ray

    def run(labelled: Any, sizes: list[int], options: dict[str, Any],
            keep_logits: bool = False) -> dict[str, np.ndarray]:
        return certify_with_ray(labelled, engine, sizes, options, workers=ray[1], chunk=BATCH,
                                batch=ray[2], address=ray[0], provider=provider, threads=threads,
                                allow_unverified=allow_unverified, keep_logits=keep_logits)

    return run


def _views_mode(backend: Any, engine: str, data: str, split: str, limit: Optional[int],
                sizes: list[int], json_out: Optional[str], dump: Optional[str], on_ray: Any) -> None:
    """A view defense's report: clean and certified accuracy, views and ms per image, per patch size."""
    from ..view_evaluate import evaluate_views, runners, sibling_rules, views_report

    side = min(backend.record.input_size)
    for size in sizes:  # before the long run, not after it
        if size > side:
            raise PatchGuardError(f"a {size} px patch does not fit the model's "
                                  f"{backend.record.input_size[0]}x{backend.record.input_size[1]} input")
    tables: dict[int, np.ndarray] = {}
    if on_ray is not None:
        from ..datasets import open_labelled

        counts = on_ray(open_labelled(data, backend.record, split, limit), sizes, {})
        seconds = [float(counts.pop(f"{k}/seconds").sum()) for k in range(len(runners(backend, sizes)))]
        report = views_report(backend, sizes, counts, seconds)
    else:
        images, labels = _load_data(data, split, backend.record, limit)
        with progress(len(images) * len(sizes) * len(sibling_rules(backend.record)), "views") as bar:
            report, tables = evaluate_views(backend, images, labels, sizes, dump=dump is not None,
                                            on_progress=bar.update)
    report = {"model": str(engine), "data": data, "split": split if data == "fashion-mnist" else None,
              **report}
    if dump is not None:
        arrays: dict[str, np.ndarray] = {f"tables_{size}": table.astype(np.int16)
                                         for size, table in tables.items()}
        with atomic_path(dump) as tmp, open(tmp, "wb") as handle:
            arrays["labels"] = labels.astype(np.int64)
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub takes allow_pickle
        report["dump"] = str(dump)
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=1) + "\n")
    kind = report["defense"]["kind"]
    click.echo(f"{report['n']} images, defense {kind}")
    click.echo(f"{'rule':>8} {'patch':>7} {'masks':>6} {'accuracy':>9} {'certified':>10} {'views/img':>10} "
               f"{'ms/img':>8}")
    for row in report["results"]:
        masks = f"{row.get('masks', '-')}"
        click.echo(f"{row['rule']:>8} {row['patch_size']:>7} {masks:>6} {row['accuracy']:9.4f} "
                   f"{row['certified']:10.4f} "
                   f"{row['views_per_image']:10.1f} {row['ms_per_image']:8.2f}")
    if dump is not None:
        click.echo(f"prediction tables: {dump}")


def labels_only(report: dict[str, Any], reason: str) -> dict[str, Any]:
    """The report of a model whose locality did not prove: accuracies kept, every
    certified figure 0 (nothing may be certified with it), the reason named."""
    def zero(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (0.0 if k == "certified" and isinstance(v, (int, float)) else zero(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [zero(v) for v in node]
        return node

    return {**zero(report), "uncertified_reason": reason}


def _labels_path(save_logits: str) -> Path:
    return Path(save_logits).with_suffix(".labels.npy")


def _load_data(data: str, split: str, record: Any,
               limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    from ..datasets import load_labelled

    found = load_labelled(data, record, split, limit)
    return found.images, found.labels


def _infer_all(backend: Any, images: np.ndarray, record: Any) -> np.ndarray:
    from ..preprocess import normalize

    with progress(len(images), "inference") as bar:
        return backend.infer_all(images, BATCH, prepare=lambda chunk: normalize(chunk, record),
                                 on_progress=bar.update)


def _print_report(report: dict[str, Any]) -> None:
    click.echo(f"{report['n']} images, undefended accuracy {report['undefended_accuracy']:.4f}")
    if report.get("uncertified_reason"):
        click.echo(f"nothing certified (--allow-unverified): {report['uncertified_reason']}")
    names = list(report["results"][0]["defenses"]) if report["results"] else []
    click.echo(f"{'patch':>7} {'window':>7}  " + "  ".join(f"{name:>17}" for name in names))
    click.echo(f"{'':>7} {'':>7}  " + "  ".join(f"{'acc':>8} {'cert':>8}" for _ in names))
    for row in report["results"]:
        window = "x".join(str(v) for v in row["window"])
        cells = "  ".join(f"{d['accuracy']:8.4f} {d['certified']:8.4f}" for d in row["defenses"].values())
        click.echo(f"{row['patch_size']!s:>7} {window:>7}  {cells}")
    rows = [row for row in report["results"] if row.get("detection")]
    if rows:
        click.echo("provable detection (accuracy of the mean logits, certified detection, "
                   "clean alert rate):")
        for row in rows:
            cells = "  ".join(f"tau {d['tau']:g}: {d['certified']:.4f} / {d['clean_alert_rate']:.4f}"
                              for d in row["detection"])
            click.echo(f"{row['patch_size']!s:>7}  acc {row['detection'][0]['accuracy']:.4f}  {cells}")


def plot_report(report: dict[str, Any], path: str) -> None:
    """Certified accuracy against patch size, one line per defense, to a PNG."""
    matplotlib = lazy_import("matplotlib", "plot")
    matplotlib.use("Agg")
    plt = lazy_import("matplotlib.pyplot", "plot")
    sizes = [row["patch_size"] for row in report["results"]]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name in report["results"][0]["defenses"]:
        axes.plot(sizes, [row["defenses"][name]["certified"] for row in report["results"]],
                  marker="o", label=name)
    axes.set_xlabel("patch size (px)")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.legend()
    axes.set_title(f"{report['n']} images, undefended accuracy {report['undefended_accuracy']:.3f}")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
