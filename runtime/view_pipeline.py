"""The per-frame path of :class:`~.pipeline.Pipeline` for view defenses (README.md, "View defenses").

A frame is preprocessed as for a BagNet; the camera patch's model-pixel
footprint (per axis, :func:`.footprint.footprint`, the same threat model as
everywhere) binds the record's defense to that patch (PatchCleanser: the
mask set for that footprint); the defense's runner scores the views it
needs, in batches, and decides. Certification is optional per frame
(``certify_every``: 1 every frame, N every N-th, 0 never); the label never
depends on it.

Per frame the result says the defense, the views scored, whether the second
round ran, and whether the certificate was checked (``views`` in the JSONL).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PatchGuardError
from .footprint import Box, ThreatCache, footprint
from .geometry import Pair
from .preprocess import ResizePlan, normalize, to_model_image
from .views import ViewRunner, view_runner


def parse_certify(value: str | int | None) -> int:
    """``--certify every|N|none`` -> certify every N-th frame (1: every, 0: never)."""
    if value is None or value == "every":
        return 1
    if value == "none":
        return 0
    try:
        every = int(value)
    except (TypeError, ValueError):
        raise PatchGuardError(f"--certify takes every, none or a frame interval N, got {value!r}") from None
    if every < 0:
        raise PatchGuardError(f"--certify N must be at least 1 (or every / none), got {every}")
    return every


@dataclass(frozen=True)
class ViewThreat:
    """A frame size's threat model for a view defense: the camera patch, its
    model-pixel footprint and the defense bound to it."""

    plan: ResizePlan
    patch_px: int
    footprint: Pair
    runner: ViewRunner


def model_box(plan: ResizePlan, box: tuple[int, int, int, int]) -> Box:
    """(top, left, bottom, right) model pixels -> (left, top, right, bottom) frame pixels covering it."""
    top, left, bottom, right = box
    crop_top, crop_left, _, _ = plan.crop
    sr, sc = plan.scale
    return (crop_left + int(np.floor(left * sc)), crop_top + int(np.floor(top * sr)),
            crop_left + int(np.ceil(right * sc)), crop_top + int(np.ceil(bottom * sr)))


class ViewFrames:
    """Frames -> FrameResults through a view defense; used by :class:`~.pipeline.Pipeline`."""

    def __init__(self, backend: Any, patch_size: int | None, patch_frac: float | None,
                 certify_every: int, value_range: Any, infer_lock: threading.Lock) -> None:
        self.backend = backend
        self.record = backend.record
        self.patch_size = patch_size
        self.patch_frac = patch_frac
        self.certify_every = int(certify_every)
        self.value_range = value_range
        self._infer_lock = infer_lock
        self._lock = threading.Lock()
        self._threats = ThreatCache(self.record, patch_size, patch_frac, self._view_threat)
        self._frames = 0

    def threat(self, frame_size: Sequence[int]) -> ViewThreat:
        return self._threats.get(frame_size)

    def _view_threat(self, size: Pair, plan: ResizePlan, side: int) -> ViewThreat:
        reach = footprint(plan, (side, side))
        h, w = self.record.input_size
        if reach[0] > h or reach[1] > w:
            raise PatchGuardError(
                f"a {side} px patch in {size[0]}x{size[1]} (HxW) frames covers {reach[0]}x{reach[1]} "
                f"model pixels, more than the model's {h}x{w} input: choose a smaller patch")
        return ViewThreat(plan, side, reach, view_runner(self.record, reach, self.backend.infer,
                                                         self.backend.max_batch))

    def _certify_flags(self, n: int) -> np.ndarray:
        with self._lock:
            first = self._frames
            self._frames += n
        if self.certify_every <= 0:
            return np.zeros(n, dtype=bool)
        return (np.arange(first, first + n) % self.certify_every) == 0

    def run_batch(self, frames: Sequence[np.ndarray], order: str) -> list[Any]:
        from .pipeline import FrameResult

        start = time.perf_counter()
        sizes = [(int(np.shape(f)[0]), int(np.shape(f)[1])) for f in frames]
        groups: dict[Pair, list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)
        threats = {size: self.threat(size) for size in groups}
        images = [to_model_image(f, self.record, order, self.value_range) for f in frames]
        batch = normalize(np.stack(images), self.record)
        wanted = self._certify_flags(len(frames))
        after_pre = time.perf_counter()
        decided: dict[int, Any] = {}
        certify_seconds = 0.0
        with self._infer_lock:
            for size, members in groups.items():
                runner = threats[size].runner
                got = runner.run(batch[members], certify=wanted[members])
                certify_seconds += getattr(runner, "certify_seconds", 0.0)
                decided.update(zip(members, got, strict=True))
        done = time.perf_counter()
        n = len(frames)
        latency = {"pre": (after_pre - start) * 1e3 / n,
                   "infer": (done - after_pre - certify_seconds) * 1e3 / n,
                   "certify": certify_seconds * 1e3 / n}
        names = self.record.class_names
        results = []
        for i in range(n):
            threat, result = threats[sizes[i]], decided[i]
            checked = result.certified is not None
            certified = bool(result.certified) if checked else False
            deciding = result.details.get("deciding_mask")
            box = None
            if deciding is not None and hasattr(threat.runner, "masks"):
                box = model_box(threat.plan, threat.runner.masks.boxes[deciding])
            side = getattr(getattr(threat.runner, "masks", None), "side", threat.footprint)
            results.append(FrameResult(
                label=result.label,
                class_name=names[result.label] if 0 <= result.label < len(names) else "",
                certified=certified,
                certified_patch_px=threat.patch_px if certified else 0,
                patch_px=threat.patch_px,
                window=tuple(side),
                masked_box=box,
                masked_class=result.label if box is not None else None,
                frame_size=sizes[i],
                latency_ms=dict(latency),
                defense=self.record.defense.kind,
                views={"scored": result.views, "certified_checked": checked, **{
                    k: v for k, v in result.details.items() if k != "deciding_mask"}},
            ))
        return results
