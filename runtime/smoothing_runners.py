"""DS, Mask-DS and crop voting as :class:`~.views.ViewRunner` s.

Each binds a record's ``defense`` entry and a patch footprint (rows,
columns in model pixels, from :mod:`.footprint`) to the view generators of
:mod:`.ablation` and the rules of :mod:`.smoothing`. These defenses need
every view of a frame for a decision, so :meth:`run` scores all of them
(W bands, or the whole crop grid) as one batch, in chunks the backend allows.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .ablation import band_keep, crop_keep, frame_views
from .defenses import certify, predict
from .geometry import Pair
from .smoothing import (
    band_confidences,
    band_delta,
    crop_delta,
    ds_counts,
    ds_margin,
    ds_predict,
    ds_votes,
    mask_ds_window,
)
from .views import ViewResult, ViewRunner, score_views


class AllViewsRunner(ViewRunner):
    """A rule that reads the logits of every view: run = from_logits(score(all_views))."""

    keep: np.ndarray  # (V, H, W)

    @property
    def views_per_frame(self) -> int:
        return int(self.keep.shape[0])

    def all_views(self, x: np.ndarray) -> np.ndarray:
        return frame_views(x, self.keep, self.record.mean, self.record.std)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, V, K) of every view of frames x (B, C, H, W), normalised."""
        x = np.asarray(x, dtype=np.float32)
        scores = score_views(self.score, self.all_views(x), self.max_batch)
        return np.asarray(scores).reshape(len(x), self.views_per_frame, -1)

    def decide(self, logits: np.ndarray,
               labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """(labels (B,), certified (B,), details shared by the frames); ``labels``
        given: certify those instead of the predictions."""
        raise NotImplementedError

    def from_logits(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted, certified, _ = self.decide(logits)
        return predicted, certified

    def run(self, x: np.ndarray, certify: bool | np.ndarray = False,
            labels: Optional[np.ndarray] = None) -> list[ViewResult]:
        return self.results(self.logits(x), labels, certify)

    def results(self, logits: np.ndarray, labels: Optional[np.ndarray] = None,
                certify: bool | np.ndarray = True) -> list[ViewResult]:
        """Per-frame results from the logits (B, V, K) of :meth:`all_views`; ``certify``
        for all frames or per frame (B,)."""
        predicted, certified, details = self.decide(logits, labels)
        asked = np.broadcast_to(np.asarray(certify, dtype=bool), (len(predicted),)) | (labels is not None)
        return [ViewResult(int(p), bool(c) if a else None, self.views_per_frame, dict(details))
                for p, c, a in zip(predicted, certified, asked)]


class VoteRunner(AllViewsRunner):
    """DS (column bands) and crop voting: votes above theta, certified against
    ``delta`` changed views (:func:`.smoothing.ds_margin`)."""

    def __init__(self, record: Any, patch: Pair, score: Callable[[np.ndarray], np.ndarray],
                 max_batch: Optional[int] = None) -> None:
        super().__init__(record, patch, score, max_batch)
        defense, size = record.defense, record.input_size
        self.kind = defense.kind
        if defense.kind == "crops":
            self.keep = crop_keep(size, defense.crop, defense.crop_stride)
            self.delta = crop_delta(size, defense.crop, defense.crop_stride, self.patch)
        else:
            self.keep = band_keep(size, defense.band)
            self.delta = band_delta(self.patch[1], defense.band, size[1])

    def decide(self, logits: np.ndarray,
               labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
        counts = ds_counts(ds_votes(logits, self.record.defense.theta), logits.shape[2])
        return ds_predict(counts), ds_margin(counts, labels) >= self.delta, {"delta": self.delta}


class MaskDSRunner(AllViewsRunner):
    """Mask-DS: robust masking over the (1, W) map of band confidences (those
    below theta zeroed) with a wrapping window of ``min(p + b - 1, W)`` bands."""

    kind = "mask-ds"

    def __init__(self, record: Any, patch: Pair, score: Callable[[np.ndarray], np.ndarray],
                 max_batch: Optional[int] = None) -> None:
        super().__init__(record, patch, score, max_batch)
        band, width = record.defense.band, record.input_size[1]
        self.keep = band_keep(record.input_size, band)
        self.window = mask_ds_window(self.patch[1], band, width)

    def decide(self, logits: np.ndarray,
               labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
        conf = band_confidences(logits, self.record.defense.theta)
        predicted = predict(conf, self.window, wrap=True)
        certified = certify(conf, self.window, labels=labels, wrap=True)
        return predicted, certified, {"window": self.window[1]}


def runners_for(record: Any, patch: Pair, score: Callable[[np.ndarray], np.ndarray],
                max_batch: Optional[int] = None) -> dict[str, AllViewsRunner]:
    """Every rule a model's views serve, by name: a band model gives both
    "ds" and "mask-ds" (the same views, two aggregations), a crop model "crops"."""
    if record.defense.kind == "crops":
        return {"crops": VoteRunner(record, patch, score, max_batch)}
    return {"ds": VoteRunner(record, patch, score, max_batch),
            "mask-ds": MaskDSRunner(record, patch, score, max_batch)}
