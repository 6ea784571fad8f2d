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
    record = backend.record
    if len(images) != len(labels):
        raise PatchGuardError(f"{len(images)} images but {len(labels)} labels")
    labels = np.asarray(labels, dtype=np.int64)
    runners = [(rule, size, view_runner(rule, (size, size), backend.infer, backend.max_batch))
               for rule in sibling_rules(record) for size in sizes]
    tally = [{"correct": 0, "certified": 0, "views": 0, "second": 0, "seconds": 0.0} for _ in runners]
    dumped: list[list[np.ndarray]] = [[] for _ in runners]
    for start in range(0, len(images), FRAMES_PER_STEP):
        x = normalize(images[start : start + FRAMES_PER_STEP], record)
        y = labels[start : start + FRAMES_PER_STEP]
        shared: tuple[np.ndarray, float] | None = None
        for k, (_, _, runner) in enumerate(runners):
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
                tally[k]["seconds"] += shared[1]
            else:
                got = runner.run(x, labels=y)
            tally[k]["seconds"] += time.perf_counter() - began
            for result, label in zip(got, y):
                tally[k]["correct"] += int(result.label == label)
                tally[k]["certified"] += int(bool(result.certified))
                tally[k]["views"] += result.views
                tally[k]["second"] += int(bool(result.details.get("second_round")))
        if on_progress is not None:
            on_progress(len(x) * len(runners))
    results, tables = [], {}
    n = max(1, len(images))
    for (rule, size, runner), t, parts in zip(runners, tally, dumped):
        row: dict[str, Any] = {
            "rule": rule.defense.kind, "patch_size": int(size), "accuracy": t["correct"] / n,
            "certified": t["certified"] / n, "views_per_image": t["views"] / n,
            "ms_per_image": 1e3 * t["seconds"] / n, "second_round": t["second"] / n}
        masks = getattr(runner, "masks", None)
        if masks is not None:
            row.update(masks=masks.count, mask=list(masks.side), mask_stride=list(masks.stride))
        results.append(row)
        if dump and rule is record:
            tables[int(size)] = np.concatenate(parts) if parts else np.empty((0,), np.int64)
    report = {"n": len(images), "defense": record.to_dict()["defense"], "results": results}
    return report, tables


def sibling_rules(record: Any) -> list[Any]:
    """The record, then the same model under each rule that reads the same
    views (a DS band model is also a Mask-DS model: same views, other
    aggregation), so the report puts them side by side."""
    kind = record.defense.kind
    others = [k for k in VIEW_SIBLINGS.get(kind, ()) if k != kind]
    return [record] + [record.replace(defense=record.defense.replace(kind=k)) for k in others]
