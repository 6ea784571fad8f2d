"""Frame in, label and certificate out: the runtime's Python API.

    with Pipeline.from_engine("model.onnx", patch_size=32) as pipeline:
        result = pipeline(frame_bgr)          # a FrameResult

Per frame: preprocess from the model record, infer the local logits u
(1, H, W, C), robust masking (PatchGuard Alg. 1) with the mask window (a, b)
that covers the camera-pixel patch's footprint (:mod:`.footprint`), the
certificate of the masked label for that patch (Alg. 2), the certified patch
size (the largest camera patch, up to the configured one, whose certificate
still holds under the same mask; found by a bracketing search, certification
being monotone in the patch), and the masked window as a frame-pixel box.

Thread safety: a :class:`Pipeline` may be called from several threads at once.
Inference is serialised by a lock around ``backend.infer`` (a TensorRT
execution context and its buffers serve one call at a time; onnxruntime would
not need it, but a single rule is easier to trust). Preprocessing and
certification run in the calling thread without the lock: they only read
shared state (the record, and threat models cached per frame size under
their own lock).
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .certificate import certify_batch
from .detection import DEFAULT_TAU
from .errors import PatchGuardError
from .files import PathText
from .footprint import Box, CameraThreat, ThreatCache, camera_threat, cells_to_box, check_patch_options
from .geometry import Pair, check_fits
from .masking import NO_LABEL, check_logits, check_params
from .metadata import ModelRecord
from .preprocess import check_color, check_value_range, normalize, to_bgr8, to_model_image
from .readouts import Readouts, abstains, double_verdicts, frame_settings, mask_readouts
from .sources import Provenance

# Frame sizes whose threat model is kept (a camera has one; a photo folder many).


@dataclass(frozen=True)
class FrameResult:
    """What the runtime says about one frame.

    ``label`` is the robust-masking prediction (``class_name`` its name);
    ``certified``: no square patch of ``patch_px`` camera pixels anywhere in
    the frame could have changed it. ``certified_patch_px``: the largest patch
    side (up to ``patch_px``) with a certificate, 0 for none. ``masked_box``:
    (left, top, right, bottom) frame pixels, right/bottom exclusive, seen by
    the window robust masking removed from ``masked_class``, the class with
    the most total evidence (the undefended model's answer: when a patch fools
    that model, this is the patch's class and the box is where the patch put
    its evidence); None when masking removed nothing from it. ``latency_ms``:
    pre, infer and certify, in milliseconds per frame.

    From the same map (:mod:`.readouts`): ``alert``, provable detection's
    alert (some patch window predicts another class with confidence > tau);
    ``top_k``, the k best (label, masked score) pairs and ``top_k_certified``
    (the label provably stays among them; robust masking only, k > 1);
    ``margin`` (logits of evidence) and ``margin_per_cell`` (mean-logit
    units), how far the worst patch is from flipping the label (negative: a
    patch can); ``confidence``, the softmax probability of the label over the
    masked scores; ``spread``, the cell-to-cell spread of the local logits (0
    for a uniform frame). ``abstained``: confidence or spread fell below the
    pipeline's threshold, so ``label`` is -1 and nothing is certified.
    ``defense``: "mask" (robust masking) or "double" (feature-space double
    masking; its ``masked_box`` is the mask whose second round decided the
    label, None when the first round did), or a view defense's kind
    ("cleanser", ...), whose ``views`` says how many views were scored,
    whether the certificate was checked (``--certify``) and the rule's own
    facts (PatchCleanser: ``second_round``); its ``window`` is the mask side
    in model pixels.
    """

    label: int
    class_name: str
    certified: bool
    certified_patch_px: int
    patch_px: int
    window: Pair
    masked_box: Optional[Box]
    masked_class: Optional[int]
    frame_size: Pair
    latency_ms: dict[str, float] = field(default_factory=dict)
    alert: bool = False
    top_k: tuple[tuple[int, float], ...] = ()
    top_k_certified: Optional[bool] = None
    margin: Optional[float] = None
    margin_per_cell: Optional[float] = None
    confidence: Optional[float] = None
    spread: Optional[float] = None
    abstained: bool = False
    defense: str = "mask"
    views: Optional[dict[str, Any]] = None
    uncertified_reason: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (lists for tuples)."""
        extra: dict[str, Any] = {
            "alert": self.alert,
            "top_k": {"labels": [label for label, _ in self.top_k],
                      "scores": [_number(score) for _, score in self.top_k],
                      "certified": self.top_k_certified},
            "margin": _number(self.margin),
            "margin_per_cell": _number(self.margin_per_cell),
            "confidence": _number(self.confidence),
            "spread": _number(self.spread),
            "abstained": self.abstained,
        }
        if self.defense != "mask":
            extra["defense"] = self.defense
        if self.views is not None:
            extra["views"] = dict(self.views)
        if self.uncertified_reason is not None:
            extra["uncertified_reason"] = self.uncertified_reason
        return {
            "label": self.label,
            "class_name": self.class_name,
            "certified": self.certified,
            "certified_patch_px": self.certified_patch_px,
            "patch_px": self.patch_px,
            "window": list(self.window),
            "masked_box": list(self.masked_box) if self.masked_box is not None else None,
            "masked_class": self.masked_class,
            "frame_size": list(self.frame_size),
            "latency_ms": {k: round(v, 4) for k, v in self.latency_ms.items()},
            **extra,
        }


def _number(value: Optional[float]) -> Optional[float]:
    """A JSON-safe float: None for None, NaN and infinities (JSON has no such numbers)."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)


@dataclass(frozen=True)
class Verdicts:
    """Certification of a batch of local-logit maps under one threat model."""

    labels: np.ndarray            # (B,) int64 robust-masking predictions
    certified: np.ndarray         # (B,) bool, for the configured patch
    certified_patch_px: np.ndarray  # (B,) int64, 0 = none
    boxes: list[Optional[Box]]
    masked_classes: list[Optional[int]]


def certify_maps(
    u: np.ndarray, threat: CameraThreat, record: ModelRecord, thres: float, clip: Optional[float]
) -> Verdicts:
    """Labels, certificates, certified patch sizes and masked boxes of u (B, H, W, C):
    :func:`.certificate.certify_batch` over the threat's patch windows, in frame terms."""
    found = certify_batch(check_logits(u), threat.window, threat.patch_windows, thres, clip,
                          strongest=True)
    sizes = np.asarray((0, *threat.sizes), dtype=np.int64)
    boxes: list[Optional[Box]] = []
    classes: list[Optional[int]] = []
    for label, hit in zip(found.labels, found.strongest, strict=True):
        if hit is None or label < 0:
            boxes.append(None)
            classes.append(None)
            continue
        c, top, left = hit
        boxes.append(cells_to_box(threat.plan, record, top, left, threat.window))
        classes.append(c)
    certified = found.index == len(threat.patch_windows) - 1
    return Verdicts(found.labels, certified, sizes[found.index + 1], boxes, classes)


class Pipeline:
    """A loaded model plus the threat model: call it on BGR frames.

    ``patch_size`` (camera pixels, square side) or ``patch_frac`` (fraction of
    the frame area) state the threat; neither: the model's default patch
    mapped to camera pixels (:func:`.footprint.patch_side`). ``thres`` is the
    detection threshold T in [0, 1), ``clip`` the ceiling c_h (None: none).
    ``color`` is the channel order of 3/4-channel frames ("bgr", OpenCV's, by
    default; "rgb" for ROS rgb8 images and most SDKs), overridable per call;
    ``value_range`` (lo, hi) maps frames that are not uint8 (uint16, float)
    onto 0..255 (:func:`.preprocess.to_uint8`); without it they are refused.
    ``readouts`` shape the per-frame readouts, the keywords of
    :func:`.readouts.frame_settings`: ``defense`` "mask" or "double"
    (``masks_per_axis``), ``tau`` (alert threshold), ``top_k``,
    ``abstain_below`` (confidence) and ``abstain_spread`` (logits).
    ``certify`` (view defenses only): certify every frame, every N-th, or none.
    """

    def __init__(
        self,
        backend: Any,
        patch_size: Optional[int] = None,
        patch_frac: Optional[float] = None,
        thres: float = 0.0,
        clip: Optional[float] = None,
        color: str = "bgr",
        value_range: Optional[Sequence[float]] = None,
        certify: Optional[Union[str, int]] = None,
        allow_unverified: bool = False,
        **readouts: Any,
    ) -> None:
        # Every option is checked here, so a bad one fails before the first frame.
        self.thres, self.clip = check_params(thres, clip)
        self.settings = frame_settings(**readouts)
        if self.settings.defense == "double" and self.thres:
            raise PatchGuardError("the detection threshold T applies to robust masking, not 'double'")
        check_patch_options(patch_size, patch_frac)
        self.color = check_color(color)
        self.value_range = check_value_range(value_range)
        self.backend = backend
        self.record: ModelRecord = backend.record
        #: Why frames get no certificate (None: they may): the model's locality is unproved.
        self.unverified: Optional[str] = getattr(backend, "unverified", None)
        if self.record.is_local and self.unverified is None and getattr(backend, "proof", None) is None:
            self.unverified = "the backend proved nothing about the model's locality"
        if self.unverified is not None and not allow_unverified:
            raise PatchGuardError(
                f"{self.unverified}; refusing to certify with it (allow_unverified=True runs it "
                "for labels only)")
        self.patch_size = patch_size
        self.patch_frac = patch_frac
        self._infer_lock = threading.Lock()
        self._threats = ThreatCache(self.record, self.patch_size, self.patch_frac, self._camera_threat)
        self._views = self._view_frames(certify)

    def _view_frames(self, certify: Optional[Union[str, int]]) -> Any:
        """The view-defense path (:mod:`.view_pipeline`) when the model is an ordinary classifier."""
        from .view_pipeline import ViewFrames, parse_certify

        every = parse_certify(certify)
        if self.record.is_local:
            if every != 1:
                raise PatchGuardError("--certify applies to view defenses (PatchCleanser, DS, crops); "
                                      "a BagNet certifies every frame")
            return None
        settings = self.settings
        local_only = {"defense": settings.defense != "mask", "thres": bool(self.thres),
                      "clip": self.clip is not None, "tau": settings.tau != DEFAULT_TAU, "top_k": settings.top_k != 1,
                      "abstain_below": settings.abstain_below is not None,
                      "abstain_spread": settings.abstain_spread is not None}
        given = [name for name, used in local_only.items() if used]
        if given:
            raise PatchGuardError(f"{', '.join(given)} apply to BagNets; {self.record.arch} runs the "
                                  f"{self.record.defense_kind} defense")
        return ViewFrames(self.backend, self.patch_size, self.patch_frac, every, self.value_range,
                          self._infer_lock)

    @classmethod
    def from_engine(
        cls,
        path: PathText,
        *,
        provider: Optional[str] = None,
        onnx: Optional[PathText] = None,
        allow_unverified: bool = False,
        **options: Any,
    ) -> "Pipeline":
        """Open ``path`` (``.onnx`` or ``.plan``) and build a pipeline around it;
        ``options`` are :class:`Pipeline`'s (patch_size, patch_frac, thres, clip,
        color, value_range, certify, and the per-frame readouts). The model's
        locality is proved at load (:mod:`.verify`); one that does not prove is
        refused, unless ``allow_unverified``: labels only, no frame certified.
        ``provider``: the onnxruntime execution provider (:mod:`.backends`).
        ``onnx``: for a TensorRT engine, the ONNX it was built from, proved again
        and checked against the SHA-256 in the engine's sidecar."""
        from .backends import open_backend

        backend = open_backend(path, provider=provider, allow_unverified=allow_unverified, onnx=onnx)
        try:
            return cls(backend, allow_unverified=allow_unverified, **options)
        except BaseException:
            backend.close()
            raise

    def threat(self, frame_size: Sequence[int]) -> Any:
        """The threat model for frames of ``frame_size`` (h, w), computed once per size
        (a :class:`~.view_pipeline.ViewThreat` for a view defense)."""
        if self._views is not None:
            return self._views.threat(frame_size)
        return self._threats.get(frame_size)

    def _camera_threat(self, size: Pair, plan: Any, side: int) -> CameraThreat:
        found = camera_threat(plan, self.record, side)
        check_fits(found.window, self.record.map_size, f"a {side} px patch in {size[0]}x{size[1]} (HxW) frames")
        return found

    def __call__(self, frame: np.ndarray, color: Optional[str] = None) -> FrameResult:
        """Label, certificate and masked box of one frame (gray, or 3/4 channels in
        ``color`` order, default the pipeline's)."""
        return self.run_batch([frame], color=color)[0]

    def run_batch(self, frames: Sequence[np.ndarray], color: Optional[str] = None) -> list[FrameResult]:
        """Several frames in one inference call; latencies are per frame."""
        order = self.color if color is None else check_color(color)
        if len(frames) == 0:
            return []
        if self._views is not None:
            return self._views.run_batch(frames, order)
        start = time.perf_counter()
        for i, f in enumerate(frames):
            if not isinstance(f, np.ndarray) or f.ndim not in (2, 3):
                got = f"a {f.ndim}-D array" if isinstance(f, np.ndarray) else type(f).__name__
                raise PatchGuardError(f"frame {i}: expected an image array (H, W) or (H, W, C), got {got}")
        sizes = [(int(np.shape(f)[0]), int(np.shape(f)[1])) for f in frames]
        groups: dict[Pair, list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)  # frames of one size share a threat model
        # Threat models first: an impossible patch fails before any inference.
        threats = {size: self.threat(size) for size in groups}
        images = [to_model_image(f, self.record, order, self.value_range) for f in frames]
        batch = normalize(np.stack(images), self.record)
        after_pre = time.perf_counter()
        with self._infer_lock:
            u = self.backend.infer(batch)
        after_infer = time.perf_counter()
        results: list[Optional[FrameResult]] = [None] * len(frames)
        verdicts = []
        for size, members in groups.items():
            threat = threats[size]
            verdicts.append((threat, members, *self._read(u[members], threat)))
        done = time.perf_counter()
        n = len(frames)
        latency = {
            "pre": (after_pre - start) * 1e3 / n,
            "infer": (after_infer - after_pre) * 1e3 / n,
            "certify": (done - after_infer) * 1e3 / n,
        }
        names = self.record.class_names
        cells = int(u.shape[1] * u.shape[2])
        for threat, members, v, r, abstained in verdicts:
            for j, i in enumerate(members):
                label = int(v.labels[j])
                margin = float(r.margin[j])
                results[i] = FrameResult(
                    label=label,
                    class_name=names[label] if 0 <= label < len(names) else "",
                    certified=bool(v.certified[j]),
                    certified_patch_px=int(v.certified_patch_px[j]),
                    patch_px=threat.patch_px,
                    window=threat.window,
                    masked_box=v.boxes[j],
                    masked_class=v.masked_classes[j],
                    frame_size=sizes[i],
                    latency_ms=dict(latency),
                    alert=bool(r.alert[j]),
                    top_k=tuple((int(c), float(x))
                                for c, x in zip(r.top_labels[j], r.top_scores[j], strict=True)),
                    top_k_certified=None if r.top_k_certified is None or abstained[j]
                    else bool(r.top_k_certified[j]),
                    margin=margin,
                    margin_per_cell=margin / cells,
                    confidence=float(r.confidence[j]),
                    spread=float(r.spread[j]),
                    abstained=bool(abstained[j]),
                    defense=self.settings.defense,
                    uncertified_reason=self.unverified,
                )
        return [res for res in results if res is not None]

    def _read(self, u: np.ndarray, threat: CameraThreat) -> tuple[Verdicts, Readouts, np.ndarray]:
        """Verdicts, readouts and abstentions (B,) of one frame size's maps."""
        settings = self.settings
        if settings.defense == "double":
            found = double_verdicts(u, threat.window, settings, self.clip)
            boxes = [None if m is None else cells_to_box(threat.plan, self.record, m[0], m[1], m[2])
                     for m in found.masks]
            classes = [None if m is None else int(y) for m, y in zip(found.masks, found.labels, strict=True)]
            verdicts = Verdicts(found.labels, found.certified,
                                np.where(found.certified, threat.patch_px, 0), boxes, classes)
            readouts = found.readouts
        else:
            verdicts = certify_maps(u, threat, self.record, self.thres, self.clip)
            readouts = mask_readouts(u, threat.window, settings, self.thres, self.clip,
                                     verdicts.labels)
        if self.unverified is not None:  # labels only: an unproved model certifies nothing
            verdicts = replace(verdicts, certified=np.zeros_like(verdicts.certified),
                               certified_patch_px=np.zeros_like(verdicts.certified_patch_px))
            readouts = replace(readouts, top_k_certified=None)
        abstained = abstains(readouts, settings) & (verdicts.labels >= 0)
        if abstained.any():
            keep = ~abstained
            verdicts = Verdicts(
                np.where(keep, verdicts.labels, NO_LABEL), verdicts.certified & keep,
                np.where(keep, verdicts.certified_patch_px, 0),
                [b if k else None for b, k in zip(verdicts.boxes, keep, strict=True)],
                [c if k else None for c, k in zip(verdicts.masked_classes, keep, strict=True)])
        return verdicts, readouts, abstained

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class StreamItem(Provenance):
    """One processed frame of a source: where it came from, when, and the verdict.

    ``time`` is the Unix time the frame arrived here; ``capture_time`` and
    ``stamp_ns`` the source's own capture stamp (seconds, integer ns), None
    where it has none, and ``color`` the channel order ``frame`` was read with
    (its :class:`~.sources.Provenance`); ``value_range`` the pipeline's (for
    frames that are not uint8). This is what every sink's ``write`` takes
    (:class:`.sinks.Sink`).
    """

    index: int
    source: str
    time: float
    frame: np.ndarray
    result: FrameResult
    value_range: Optional[tuple[float, float]] = None

    @functools.cached_property
    def view(self) -> np.ndarray:
        """The frame as uint8 BGR (or gray), converted once for every sink that shows it."""
        return to_bgr8(self.frame, self.color, self.value_range)


def stream(
    pipeline: Pipeline, frames: Iterable[Any], max_frames: Optional[int] = None,
    color: Optional[str] = None,
) -> Iterator[StreamItem]:
    """Run ``pipeline`` over a frame source's :class:`~.sources.SourceFrame` items.

    Yields :class:`StreamItem`; stops after ``max_frames`` or when the source
    ends. ``color`` overrides the channel order each frame says it has (a
    camera that delivers RGB; ``--color``).
    """
    if max_frames is not None and max_frames < 1:
        return
    forced = check_color(color) if color is not None else None
    for count, item in enumerate(frames, start=1):
        stamp = time.time()
        order = forced or item.color
        yield StreamItem(item.index, item.name, stamp, item.image, pipeline(item.image, color=order),
                         pipeline.value_range, color=order, stamp_ns=item.stamp_ns, frame_id=item.frame_id)
        if max_frames is not None and count >= max_frames:
            return
