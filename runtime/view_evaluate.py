"""Clean and certified accuracy of a view defense on a labelled set (``pg-certify --engine``).

For each patch size p (model pixels; images at model size, so the footprint
is p x p), and for each rule that reads the same views (DS and Mask-DS from
one band model, :data:`~.views.VIEW_SIBLINGS`), the defense is bound to that patch
(:func:`~.views.view_runner`) and run on every image exactly as deployed:
the label from the defense (PatchCleanser: double masking), the certificate
of the TRUE label (a certified label is the one the defense outputs, so
"certified" implies "correct"). Report (JSON-ready)::

    {"n": N, "defense": {...record entry...},
     "results": [{"rule": kind, "patch_size": p, "accuracy": .., "certified": ..,
                  "views_per_image": .., "ms_per_image": .., "masks": M,
                  "mask": [m_rows, m_cols], "second_round": fraction}, ...]}

``dump`` (PatchCleanser): score every two-mask view of every image (no early
exit) and return the prediction tables (N, M, M) per patch size, from which
both figures can be recomputed independently (``pg-certify --dump``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import PatchGuardError
from .preprocess import normalize
from .smoothing_runners import AllViewsRunner
from .views import VIEW_SIBLINGS, view_runner

# Frames per call into the runner: enough views per backend batch to amortise
# its overhead, few enough that early exit still saves work.
FRAMES_PER_STEP = 32


def evaluate_views(
    backend: Any, images: np.ndarray, labels: np.ndarray, sizes: Sequence[int],
    dump: bool = False, on_progress: Callable[[int], Any] | None = None,
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """The report above, and the prediction tables per patch size when ``dump``."""
    counts, seconds, tables = view_counts(backend, images, labels, sizes, dump, on_progress)
    return views_report(backend, sizes, counts, seconds), tables


def view_counts(
    backend: Any, images: np.ndarray, labels: np.ndarray, sizes: Sequence[int],
    dump: bool = False, on_progress: Callable[[int], Any] | None = None,
) -> tuple[dict[str, np.ndarray], list[float], dict[int, np.ndarray]]:
    """Per image, for the k-th (rule, patch size) of :func:`runners`: ``"{k}/correct"``,
    ``"{k}/certified"``, ``"{k}/second"`` (0/1) and ``"{k}/views"`` (views scored),
    int64 (N,); the seconds each pair took; the prediction tables when ``dump``.

    Images are run in steps of :data:`FRAMES_PER_STEP` from the first, so a
    part of a data set that starts at a multiple of it is run exactly as in
    the whole (how ``pg-certify --ray`` certifies on its workers).
    """
    record = backend.record
    if len(images) != len(labels):
        raise PatchGuardError(f"{len(images)} images but {len(labels)} labels")
    labels = np.asarray(labels, dtype=np.int64)
    pairs = runners(backend, sizes)
    counts = {f"{k}/{name}": np.zeros(len(images), dtype=np.int64)
              for k in range(len(pairs)) for name in ("correct", "certified", "views", "second")}
    seconds = [0.0] * len(pairs)
    dumped: list[list[np.ndarray]] = [[] for _ in pairs]
    for start in range(0, len(images), FRAMES_PER_STEP):
        x = normalize(images[start : start + FRAMES_PER_STEP], record)
        y = labels[start : start + FRAMES_PER_STEP]
        shared: tuple[np.ndarray, float] | None = None
        for k, (_, _, runner) in enumerate(pairs):
            began = time.perf_counter()
            if dump:
                got, table = runner.run_full(x, labels=y)
                dumped[k].append(table)
            elif isinstance(runner, AllViewsRunner):
                # Rules that read every view (DS, Mask-DS, crops): the views are
                # scored once per chunk and each rule pays for that scoring.
                if shared is None:
                    began_scoring = time.perf_counter()
                    shared = (runner.logits(x), time.perf_counter() - began_scoring)
                    began = time.perf_counter()
                got = runner.results(shared[0], labels=y)
                seconds[k] += shared[1]
            else:
                got = runner.run(x, labels=y)
            seconds[k] += time.perf_counter() - began
            for n, (result, label) in enumerate(zip(got, y), start=start):
                counts[f"{k}/correct"][n] = int(result.label == label)
                counts[f"{k}/certified"][n] = int(bool(result.certified))
                counts[f"{k}/views"][n] = result.views
                counts[f"{k}/second"][n] = int(bool(result.details.get("second_round")))
        if on_progress is not None:
            on_progress(len(x) * len(pairs))
    tables = {}
    for (rule, size, _), parts in zip(pairs, dumped):
        if dump and rule is record:
            tables[int(size)] = np.concatenate(parts) if parts else np.empty((0,), np.int64)
    return counts, seconds, tables


def runners(backend: Any, sizes: Sequence[int]) -> list[tuple[Any, int, Any]]:
    """(rule, patch size, runner) for every rule that reads the model's views and every size."""
    return [(rule, size, view_runner(rule, (size, size), backend.infer, backend.max_batch))
            for rule in sibling_rules(backend.record) for size in sizes]


def views_report(backend: Any, sizes: Sequence[int], counts: dict[str, np.ndarray],
                 seconds: Sequence[float]) -> dict[str, Any]:
    """The report (above) from the per-image counts of :func:`view_counts` (of any
    number of parts, concatenated) and the seconds spent per (rule, size)."""
    length = len(counts["0/correct"]) if counts else 0
    n = max(1, length)
    results = []
    for k, (rule, size, runner) in enumerate(runners(backend, sizes)):
        total = {name: int(counts[f"{k}/{name}"].sum()) for name in ("correct", "certified", "views", "second")}
        row: dict[str, Any] = {
            "rule": rule.defense.kind, "patch_size": int(size), "accuracy": total["correct"] / n,
            "certified": total["certified"] / n, "views_per_image": total["views"] / n,
            "ms_per_image": 1e3 * seconds[k] / n, "second_round": total["second"] / n}
        masks = getattr(runner, "masks", None)
        if masks is not None:
            row.update(masks=masks.count, mask=list(masks.side), mask_stride=list(masks.stride))
        results.append(row)
    return {"n": length, "defense": backend.record.to_dict()["defense"], "results": results}


def sibling_rules(record: Any) -> list[Any]:
    """The record, then the same model under each rule that reads the same
    views (a DS band model is also a Mask-DS model: same views, other
    aggregation), so the report puts them side by side."""
    kind = record.defense.kind
    others = [k for k in VIEW_SIBLINGS.get(kind, ()) if k != kind]
    return [record] + [record.replace(defense=record.defense.replace(kind=k)) for k in others]
