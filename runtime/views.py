"""Views: defenses that run an ordinary classifier many times per frame.

README.md, "View defenses". One frame becomes V ablated copies ("views"); an ordinary
classifier f (logits (B, K), any receptive field) scores them as one batch;
a numpy rule decides and certifies. Numpy only, no torch.

The shape every view defense shares:

- a **keep mask** per view, bool (V, H, W): True where the view keeps the
  frame's pixel (a PatchCleanser mask keeps everything but its rectangle, a
  DS band keeps a band of columns, a crop keeps its square);
- :func:`masked_views` (fill the dropped pixels with one value, after
  normalisation: PatchCleanser) or an encoding of the defense's own (DS's
  (x, 1 - x) channels, written by its module) turns (B, C, H, W) frames into
  (B * V, C', H, W) views, frame-major (frame b's views are rows b*V .. b*V+V-1);
- :func:`score_views` runs the backend on them, in chunks that bound memory,
  and returns logits (B * V, K); :func:`view_labels` the argmax (ties: the
  lowest class index, as everywhere in this project).

:class:`ViewDefense` is the ``defense`` entry of the model record (the
``patchguard`` metadata JSON): which rule, and its parameters. BagNets carry
no entry (``kind: "local"`` implied).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PatchGuardError
from .geometry import Pair, as_pair

VIEW_KINDS = ("ds", "mask-ds", "crops", "cleanser")
ENCODINGS = ("x,1-x",)
# Rules that read the same views of the same model: a DS band model is also a
# Mask-DS model (reports put them side by side).
VIEW_SIBLINGS: dict[str, tuple[str, ...]] = {"ds": ("ds", "mask-ds"), "mask-ds": ("mask-ds", "ds")}
# The fields each kind writes into the record (besides "kind").
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "ds": ("band", "theta", "encoding"),
    "mask-ds": ("band", "theta", "encoding"),
    "crops": ("crop", "crop_stride", "theta", "encoding"),
    "cleanser": ("masks_per_axis", "fill"),
}
# Views per backend call when the caller does not say: 1024 views of a
# 224x224x3 frame are 600 MB of float32; of a 28x28 one, 3 MB.
VIEW_BYTES_PER_CHUNK = 256 * 2**20

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ViewDefense:
    """The ``defense`` entry of a view-based model's record.

    ``kind``: one of :data:`VIEW_KINDS`. ``ds`` / ``mask-ds``: ``band`` b
    columns per view, vote threshold ``theta`` on the softmax, ``encoding``
    ("x,1-x": 2C channels). ``crops``: ``crop`` side c and ``crop_stride`` t,
    ``theta`` and ``encoding`` as DS (a crop view is the frame with all else ablated).
    ``cleanser``: ``masks_per_axis`` k (rows, columns) and ``fill``, the
    value masked pixels take after normalisation. Fields another kind uses
    stay at their defaults and are not written.
    """

    kind: str
    band: int = 0
    theta: float = 0.0
    encoding: str = ""
    crop: int = 0
    crop_stride: int = 0
    masks_per_axis: Pair = (0, 0)
    fill: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise PatchGuardError(
                f"unknown defense kind {self.kind!r}; known: local, {', '.join(VIEW_KINDS)}"
            )
        if self.kind == "cleanser":
            object.__setattr__(self, "masks_per_axis", as_pair(self.masks_per_axis, "masks_per_axis"))
        else:
            object.__setattr__(self, "masks_per_axis", tuple(int(v) for v in self.masks_per_axis))
        if not math.isfinite(float(self.fill)) or not math.isfinite(float(self.theta)):
            raise PatchGuardError("defense fill and theta must be finite numbers")
        if not 0.0 <= float(self.theta) < 1.0:
            raise PatchGuardError(f"defense theta must lie in [0, 1), got {self.theta}")
        if self.kind in ("ds", "mask-ds") and int(self.band) < 1:
            raise PatchGuardError(f"a {self.kind} defense needs band >= 1, got {self.band}")
        if self.kind in ("ds", "mask-ds", "crops") and self.encoding not in ENCODINGS:
            raise PatchGuardError(
                f"unknown view encoding {self.encoding!r}; known: {', '.join(ENCODINGS)}"
            )
        if self.kind == "crops" and (int(self.crop) < 1 or int(self.crop_stride) < 1):
            raise PatchGuardError(
                f"a crops defense needs crop >= 1 and crop_stride >= 1, got {self.crop}, {self.crop_stride}"
            )

    @property
    def in_channels_factor(self) -> int:
        """Model input channels per image channel (2 for the (x, 1 - x) encoding)."""
        return 2 if self.encoding == "x,1-x" else 1

    def replace(self, **changes: Any) -> ViewDefense:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for name in KIND_FIELDS[self.kind]:
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ViewDefense | None:
        """The entry as read from metadata; None for a local (BagNet) model."""
        if data is None:
            return None
        if not isinstance(data, dict) or "kind" not in data:
            raise PatchGuardError("model metadata 'defense' must be an object with a 'kind'")
        if data["kind"] == "local":
            return None
        kind = data["kind"]
        if kind not in KIND_FIELDS:
            raise PatchGuardError(
                f"unknown defense kind {kind!r}; known: local, {', '.join(VIEW_KINDS)}"
            )
        missing = [name for name in KIND_FIELDS[kind] if name not in data]
        if missing:
            raise PatchGuardError(f"model metadata 'defense' ({kind}) lacks {', '.join(missing)}")
        try:
            return cls(kind=kind, **{name: data[name] for name in KIND_FIELDS[kind]})
        except (TypeError, ValueError) as exc:
            raise PatchGuardError(f"model metadata 'defense' is malformed: {exc}") from None


def masked_views(x: np.ndarray, keep: np.ndarray, fill: float) -> np.ndarray:
    """Frames (B, C, H, W) and keep masks (V, H, W) -> views (B * V, C, H, W), frame-major.

    A view is its frame where ``keep`` is True and ``fill`` elsewhere (values
    after normalisation, as the model sees them).
    """
    x = np.asarray(x, dtype=np.float32)
    keep = np.asarray(keep, dtype=bool)
    if x.ndim != 4 or keep.ndim != 3 or keep.shape[1:] != x.shape[2:]:
        raise PatchGuardError(f"views need frames (B, C, H, W) and masks (V, H, W), got "
                              f"{x.shape} and {keep.shape}")
    b, c, h, w = x.shape
    out = np.empty((b, keep.shape[0], c, h, w), dtype=np.float32)
    out[...] = np.float32(fill)
    np.copyto(out, x[:, None], where=keep[None, :, None])
    return out.reshape(b * keep.shape[0], c, h, w)


def chunk_size(view_shape: tuple[int, ...], max_batch: int | None = None) -> int:
    """Views per backend call: bounded by memory and by the backend's largest batch."""
    per_view = max(1, int(np.prod(view_shape)) * 4)
    size = max(1, VIEW_BYTES_PER_CHUNK // per_view)
    return min(size, max_batch) if max_batch else size


def score_views(score: Scorer, views: np.ndarray, max_batch: int | None = None) -> np.ndarray:
    """Logits (N, K) of views (N, C, H, W) from ``score`` (e.g. ``backend.infer``), in chunks."""
    size = chunk_size(views.shape[1:], max_batch)
    if len(views) <= size:
        return np.asarray(score(views))
    return np.concatenate([np.asarray(score(views[i:i + size])) for i in range(0, len(views), size)])


def view_labels(logits: np.ndarray) -> np.ndarray:
    """argmax of logits (..., K) -> int64 (...); ties to the lowest class; NaN rows -> -1."""
    logits = np.asarray(logits)
    labels = np.argmax(logits, axis=-1).astype(np.int64)
    bad = ~np.isfinite(logits).all(axis=-1)
    if bad.any():
        # A NaN view has no label: it matches no class, so it can never help certify.
        labels[bad] = -1
    return labels


@dataclass
class ViewResult:
    """One frame's decision by a view defense.

    ``certified`` is None when certification was not asked; ``views`` counts
    the views scored for the frame; ``details`` holds the rule's own facts
    (PatchCleanser: ``second_round``), written into the JSONL as they are.
    """

    label: int
    certified: bool | None
    views: int
    details: dict = dataclasses.field(default_factory=dict)


class ViewRunner:
    """A view defense bound to a record, a patch footprint and a scorer.

    Subclasses (one per kind) implement:

    - :meth:`run`: the deployed path: labels (and certificates) of frames
      (B, C, H, W), normalised, scoring only the views they need;
    - :meth:`all_views` and :meth:`from_logits`: every view a frame can need
      and the decision from all their logits (B, V_all, K): the parity
      report compares artifacts this way, and tests check that :meth:`run`
      agrees with it.
    """

    kind: str = ""

    def __init__(self, record: Any, patch: Pair, score: Scorer, max_batch: int | None = None) -> None:
        self.record = record
        self.patch = as_pair(patch, "patch footprint")
        self.score = score
        self.max_batch = max_batch

    def run(self, x: np.ndarray, certify: bool | np.ndarray = False,
            labels: np.ndarray | None = None) -> list[ViewResult]:
        """Labels of frames x; ``certify``: certify them too (a bool, or one per frame)."""
        raise NotImplementedError

    def all_views(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_full(self, x: np.ndarray, labels: np.ndarray | None = None) -> tuple[list[ViewResult], np.ndarray]:
        """:meth:`run` with certification, scoring every view; also the per-frame prediction tables."""
        raise PatchGuardError(f"the {self.kind} defense has no prediction-table dump")

    def from_logits(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels (B,), certified (B,)) from the logits of :meth:`all_views`, reshaped (B, V_all, K)."""
        raise NotImplementedError

    @property
    def views_per_frame(self) -> int:
        """Views of one frame in :meth:`all_views`."""
        raise NotImplementedError


def view_runner(record: Any, patch: Pair, score: Scorer, max_batch: int | None = None) -> ViewRunner:
    """The runner of ``record.defense`` (each kind's module registers here)."""
    defense = record.defense
    if defense is None:
        raise PatchGuardError(f"{record.arch} is a BagNet (local logits); it has no view defense")
    if defense.kind == "cleanser":
        from .cleanser import CleanserRunner

        return CleanserRunner(record, patch, score, max_batch)
    from .smoothing_runners import MaskDSRunner, VoteRunner

    if defense.kind == "mask-ds":
        return MaskDSRunner(record, patch, score, max_batch)
    return VoteRunner(record, patch, score, max_batch)
