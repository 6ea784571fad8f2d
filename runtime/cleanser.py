"""PatchCleanser (Xiang et al., USENIX Security 2022): double masking for any classifier.

Symbols as in the paper. Per image axis of N pixels, with a patch footprint of
p pixels (model pixels, from the camera patch) and k masks per axis, the
masks of :func:`.geometry.mask_axis` (shared with feature-space double
masking): stride s = ceil((N - p + 1) / k), mask side m = min(p + s - 1, N),
starts range(0, N - m + 1, s) plus N - m when missing. The mask set M is
the product of the two axes' masks (row-major), |M| <= k_rows * k_cols;
every p_rows x p_cols patch lies inside one mask (:meth:`.geometry.MaskGrid.covering`).

f(x ⊙ m) is the classifier on x with the pixels of m set to the record's
fill value (after normalisation). Two-mask predictions f(x ⊙ m_i ⊙ m_j)
form the symmetric table P (|M|, |M|) whose diagonal is the first round.

- Double masking (Algorithm 1): first round P[i, i] for every mask; all
  equal: that label. Otherwise, with y_maj the first-round majority (ties:
  lowest class), for each mask i with P[i, i] != y_maj in list order: if
  P[i, j] == P[i, i] for every j, output P[i, i]. None: output y_maj.
- Certification (Theorem 1): y is certified iff P[i, j] == y for all
  i <= j. Then for any patch inside a mask m_k the output is y: the first
  round of the attacked image has P'[k, k] = y, and every disagreer i has
  P'[i, k] = P[i, k] = y != P'[i, i], so no disagreer wins.

:class:`DoubleMasking` runs both on batches of frames with a scorer
(``backend.infer``) scoring views in batches; certification exits early on
the first disagreeing view batch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PatchGuardError
from .geometry import IntOrPair, MaskGrid, Pair, as_pair, mask_grid
from .views import ViewResult, ViewRunner, chunk_size, masked_views, view_labels

# A table entry never scored (early exit, or not needed).
UNSCORED = -2


@dataclass(frozen=True)
class PixelMaskSet(MaskGrid):
    """PatchCleanser's masks over an (H, W) image in model pixels: the mask grid
    (:class:`~patchguard.runtime.geometry.MaskGrid`) and each mask's keep array
    ``keep`` (|M|, H, W), False inside the mask."""

    keep: np.ndarray = field(repr=False, compare=False)

    def pair_keep(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Keep masks (n, H, W) of the two-mask views (i[n], j[n])."""
        return self.keep[np.asarray(i)] & self.keep[np.asarray(j)]


def pixel_mask_set(input_size: IntOrPair, patch: IntOrPair, masks_per_axis: IntOrPair) -> PixelMaskSet:
    """The mask set of an (H, W) image for a (p_rows, p_cols) footprint and (k_rows, k_cols)."""
    h, w = as_pair(input_size, "input size")
    grid = mask_grid((h, w), as_pair(patch, "patch footprint"), masks_per_axis)
    keep = np.ones((grid.count, h, w), dtype=bool)
    for index, (top, left, bottom, right) in enumerate(grid.boxes):
        keep[index, top:bottom, left:right] = False
    return PixelMaskSet(grid.rows, grid.cols, keep)


def majority(labels: np.ndarray, num_classes: int) -> int:
    """Most frequent label (ties: the lowest class); -1 labels (NaN views) never count."""
    valid = labels[labels >= 0]
    if valid.size == 0:
        return -1
    return int(np.argmax(np.bincount(valid, minlength=num_classes)))


def decide(table: np.ndarray, num_classes: int) -> tuple[int, bool, int | None]:
    """Algorithm 1 on one frame's two-mask table (|M|, |M|): (label, second round ran,
    the mask whose second round decided, or None).

    Reads only the entries it needs; an :data:`UNSCORED` entry where one is
    needed is a bug in the caller. (The whole-batch twin on full tables of
    scores is :func:`.double_masking.decide_with_mask`; this one reads label
    tables scored lazily, with -1 for a NaN view; the tests check they agree.)
    """
    first = np.diagonal(table)
    if (first == first[0]).all() and first[0] >= 0:
        return int(first[0]), False, None
    y_maj = majority(first, num_classes)
    for i in np.flatnonzero(first != y_maj):
        row = table[i]
        if (row == UNSCORED).any():
            raise PatchGuardError("internal: double masking read an unscored two-mask prediction")
        if first[i] >= 0 and (row == first[i]).all():
            return int(first[i]), True, int(i)
    return y_maj, True, None


def certified(table: np.ndarray, label: int) -> bool:
    """Theorem 1: every two-mask prediction (i <= j) equals ``label``."""
    return label >= 0 and bool((table == label).all())


@dataclass
class CleanserResult:
    """Per frame: the double-masking label and what it took."""

    label: int
    certified: bool | None         # None: not asked
    views: int                     # views scored for this frame (both rounds and certification)
    second_round: bool
    deciding_mask: int | None = None  # the mask whose second round decided the label


class DoubleMasking:
    """Double masking and certification of frames through a view scorer.

    ``score`` maps views (N, C, H, W) float32 to logits (N, K) (a backend's
    ``infer``); ``max_batch`` bounds one call (an engine's profile).
    """

    def __init__(self, masks: PixelMaskSet, fill: float, num_classes: int,
                 score: Callable[[np.ndarray], np.ndarray], max_batch: int | None = None) -> None:
        self.masks = masks
        self.fill = float(fill)
        self.num_classes = int(num_classes)
        self.score = score
        self.max_batch = max_batch
        count = masks.count
        upper = np.triu_indices(count, k=1)
        self._pairs = (upper[0].astype(np.int64), upper[1].astype(np.int64))

    def _labels(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Labels (B, V) of frames x (B, C, H, W) under keep masks (V, H, W)."""
        b, v = len(x), len(keep)
        out = np.empty((b, v), dtype=np.int64)
        per_frame = max(1, chunk_size(x.shape[1:], self.max_batch) // max(1, b))
        for start in range(0, v, per_frame):
            part = keep[start : start + per_frame]
            views = masked_views(x, part, self.fill)
            logits = self.score(views)
            out[:, start : start + len(part)] = view_labels(logits).reshape(b, len(part))
        return out

    def first_round(self, x: np.ndarray) -> np.ndarray:
        """One-mask labels (B, |M|)."""
        return self._labels(x, self.masks.keep)

    def run(self, x: np.ndarray, certify: bool | np.ndarray = False, full: bool = False,
            labels: np.ndarray | None = None) -> tuple[list[CleanserResult], np.ndarray]:
        """Double masking (and certification) of frames x (B, C, H, W), normalised.

        ``certify``: also certify each frame's label (Theorem 1), with early
        exit (a bool, or one per frame); ``labels``: certify these labels
        instead (evaluation; every frame). ``certify_seconds`` holds the time
        the last call spent on certification alone.
        ``full``: score every two-mask view (no early exit; ``--dump``).
        Returns the per-frame results and the tables (B, |M|, |M|) int64 with
        :data:`UNSCORED` where a view was not needed.
        """
        x = np.asarray(x, dtype=np.float32)
        b, count = len(x), self.masks.count
        self.certify_seconds = 0.0
        wanted = np.ones(b, dtype=bool) if labels is not None else np.broadcast_to(
            np.asarray(certify, dtype=bool), (b,))
        tables = np.full((b, count, count), UNSCORED, dtype=np.int64)
        first = self.first_round(x)
        idx = np.arange(count)
        tables[:, idx, idx] = first
        views = np.full(b, count, dtype=np.int64)
        rows_i, rows_j = self._pairs
        if full:
            for f in range(b):
                labels_ij = self._pair_labels(x[f : f + 1], rows_i, rows_j)[0]
                tables[f, rows_i, rows_j] = labels_ij
                tables[f, rows_j, rows_i] = labels_ij
            views += len(rows_i)
        unanimous = (first == first[:, :1]).all(axis=1) & (first[:, 0] >= 0)
        results: list[CleanserResult] = []
        for f in range(b):
            if not unanimous[f] and not full:
                views[f] += self._second_round(x[f], tables[f])
            label, second, deciding = decide(tables[f], self.num_classes)
            results.append(CleanserResult(label, None, int(views[f]), second, deciding))
        if wanted.any():
            began = time.perf_counter()
            targets = np.array([r.label for r in results]) if labels is None else np.asarray(labels)
            alive = [f for f in range(b) if wanted[f] and unanimous[f] and first[f, 0] == targets[f]]
            if not full:
                views += self._certify_pairs(x, tables, alive, targets)
            for f, result in enumerate(results):
                if wanted[f]:
                    result.certified = certified(tables[f], int(targets[f]))
                result.views = int(views[f])
            self.certify_seconds = time.perf_counter() - began
        return results, tables

    def _pair_labels(self, x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self._labels(x, self.masks.pair_keep(i, j))

    def _second_round(self, frame: np.ndarray, table: np.ndarray) -> int:
        """Fill the rows Algorithm 1 reads, disagreer by disagreer; returns views scored."""
        first = np.diagonal(table).copy()
        y_maj = majority(first, self.num_classes)
        scored = 0
        for i in np.flatnonzero(first != y_maj):
            others = np.array([j for j in range(len(first)) if j != i and table[i, j] == UNSCORED])
            if len(others):
                got = self._pair_labels(frame[None], np.full(len(others), i), others)[0]
                table[i, others] = got
                table[others, i] = got
                scored += len(others)
            if first[i] >= 0 and (table[i] == first[i]).all():
                break
        return scored

    def _certify_pairs(self, x: np.ndarray, tables: np.ndarray, alive: list[int],
                       targets: np.ndarray) -> np.ndarray:
        """Score the off-diagonal pairs of the ``alive`` frames, chunk by chunk, until one disagrees."""
        b = len(x)
        scored = np.zeros(b, dtype=np.int64)
        rows_i, rows_j = self._pairs
        total = len(rows_i)
        if not alive or total == 0:
            return scored
        step = max(1, chunk_size(x.shape[1:], self.max_batch) // max(1, len(alive)))
        # Small first chunks: most uncertified frames fail within the first pairs.
        step = min(step, max(32, math.ceil(total / 8)))
        alive_arr = np.array(alive)
        for start in range(0, total, step):
            if len(alive_arr) == 0:
                break
            i, j = rows_i[start : start + step], rows_j[start : start + step]
            got = self._labels(x[alive_arr], self.masks.pair_keep(i, j))
            tables[alive_arr[:, None], i[None], j[None]] = got
            tables[alive_arr[:, None], j[None], i[None]] = got
            scored[alive_arr] += len(i)
            ok = (got == targets[alive_arr][:, None]).all(axis=1)
            alive_arr = alive_arr[ok]
        return scored


class CleanserRunner(ViewRunner):
    """PatchCleanser as a :class:`~patchguard.runtime.views.ViewRunner`."""

    kind = "cleanser"

    def __init__(self, record: Any, patch: Pair, score: Callable[[np.ndarray], np.ndarray],
                 max_batch: int | None = None) -> None:
        super().__init__(record, patch, score, max_batch)
        defense = record.defense
        self.masks = pixel_mask_set(record.input_size, self.patch, defense.masks_per_axis)
        self.engine = DoubleMasking(self.masks, defense.fill, record.num_classes, score, max_batch)
        upper = np.triu_indices(self.masks.count)
        self._upper = (upper[0], upper[1])

    @property
    def certify_seconds(self) -> float:
        """Time the last :meth:`run` spent certifying (the pipeline's latency split)."""
        return float(getattr(self.engine, "certify_seconds", 0.0))

    def run(self, x: np.ndarray, certify: bool | np.ndarray = False,
            labels: np.ndarray | None = None) -> list[ViewResult]:
        results, _ = self.engine.run(x, certify=certify, labels=labels)
        return [_result(r) for r in results]

    def run_full(self, x: np.ndarray, labels: np.ndarray | None = None) -> tuple[list[ViewResult], np.ndarray]:
        """:meth:`run` scoring every two-mask view (no early exit); also the tables (B, M, M)."""
        results, tables = self.engine.run(x, certify=True, full=True, labels=labels)
        return [_result(r) for r in results], tables

    @property
    def views_per_frame(self) -> int:
        return self.masks.pair_count

    def all_views(self, x: np.ndarray) -> np.ndarray:
        """Every two-mask view (i <= j, row-major over the upper triangle) of frames x."""
        return masked_views(x, self.masks.pair_keep(*self._upper), self.engine.fill)

    def tables(self, logits: np.ndarray) -> np.ndarray:
        """Two-mask prediction tables (B, |M|, |M|) from the logits (B, V_all, K) of :meth:`all_views`."""
        labels = view_labels(logits)
        count = self.masks.count
        tables = np.empty((len(labels), count, count), dtype=np.int64)
        i, j = self._upper
        tables[:, i, j] = labels
        tables[:, j, i] = labels
        return tables

    def from_logits(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tables = self.tables(logits)
        labels = np.array([decide(t, self.record.num_classes)[0] for t in tables], dtype=np.int64)
        ok = np.array([certified(t, int(y)) for t, y in zip(tables, labels)], dtype=bool)
        return labels, ok


def _result(r: CleanserResult) -> ViewResult:
    return ViewResult(r.label, r.certified, r.views,
                      {"second_round": r.second_round, "deciding_mask": r.deciding_mask})
