"""Clean and certified accuracy of a view defense on a labelled set (``pg-certify --engine``).

For each patch size p (model pixels; images at model size, so the footprint
is p x p), the record's defense is bound to that patch
(:func:`~.views.view_runner`) and run on every image exactly as deployed:
the label from the defense (PatchCleanser: double masking), the certificate
of the TRUE label (a certified label is the one the defense outputs, so
"certified" implies "correct"). Report (JSON-ready)::

    {"n": N, "defense": {...record entry...},
     "results": [{"patch_size": p, "accuracy": .., "certified": ..,
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
from .views import view_runner

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
    results, tables = [], {}
    for size in sizes:
        runner = view_runner(record, (size, size), backend.infer, backend.max_batch)
        correct = certified = views = second = 0
        dumped = []
        began = time.perf_counter()
        for start in range(0, len(images), FRAMES_PER_STEP):
            x = normalize(images[start : start + FRAMES_PER_STEP], record)
            y = labels[start : start + FRAMES_PER_STEP]
            if dump:
                got, table = runner.run_full(x, labels=y)
                dumped.append(table)
            else:
                got = runner.run(x, labels=y)
            for result, label in zip(got, y):
                correct += int(result.label == label)
                certified += int(bool(result.certified))
                views += result.views
                second += int(bool(result.details.get("second_round")))
            if on_progress is not None:
                on_progress(len(x))
        seconds = time.perf_counter() - began
        n = max(1, len(images))
        row: dict[str, Any] = {"patch_size": int(size), "accuracy": correct / n, "certified": certified / n,
               "views_per_image": views / n, "ms_per_image": 1e3 * seconds / n,
               "second_round": second / n}
        masks = getattr(runner, "masks", None)
        if masks is not None:
            row.update(masks=masks.count, mask=list(masks.side), mask_stride=list(masks.stride))
        results.append(row)
        if dump:
            tables[int(size)] = np.concatenate(dumped) if dumped else np.empty((0,), np.int64)
    report = {"n": len(images), "defense": record.to_dict()["defense"], "results": results}
    return report, tables
