"""The one face every inference backend shows (Polygraphy's "runner").

A backend is a context manager holding one loaded model. ``infer`` takes a
float32 NCHW batch (B, C, H, W) and returns the model's output as float32:
for a BagNet the local logits u (B, H', W', K), one class-logit vector per
feature cell; for an ordinary classifier run by a view defense (README.md,
"View defenses") the logits (B, K) (``record.output_shape``). The base class
does the checking once, so the backends stay thin: the input must match the
record's channels and input size, and a BagNet's map must have the size
``floor((input - r) / s) + 1`` that the record's receptive field r and stride
s promise (a certificate computed on any other map would be unsound).
"""
from __future__ import annotations

import abc
import contextlib
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..errors import InferenceError, MissingDependencyError, PatchGuardError
from ..metadata import ModelRecord
from ..verify import ProvedGeometry, VerificationError


class Backend(abc.ABC):
    """A loaded model: ``with open_backend(path) as model: u = model.infer(x)``.

    Subclasses set ``name`` (the backend kind, e.g. ``"onnxruntime"``),
    ``provider`` (what runs it, e.g. ``"CPUExecutionProvider"``), ``record``,
    and ``max_batch`` (None: any batch size; larger batches are run in chunks
    of ``max_batch``), and implement :meth:`_run`.
    """

    name: str = "backend"
    provider: str = ""
    #: True where one device state (an execution context, one set of GPU buffers)
    #: serves every call: ``infer`` calls then run one at a time, and ``close``
    #: waits for a running one, so buffers are never freed under a kernel.
    serial: bool = False

    #: The locality the runtime proved for this model (:mod:`..verify`); None when nothing
    #: was proved (a view-based model, whose certificates do not rest on locality, or one
    #: loaded with ``allow_unverified``).
    proof: Optional[ProvedGeometry] = None
    #: Why this model gets no certificates (None: it may certify); set by :meth:`attest`.
    unverified: Optional[str] = None

    def __init__(self, path: Path, record: ModelRecord, max_batch: Optional[int] = None) -> None:
        self.path = Path(path)
        self.record = record
        self.max_batch = max_batch
        self._closed = False
        self._lock = threading.Lock()

    # -- checks shared by every backend ---------------------------------------------------
    def attest(self, prove: Callable[[], ProvedGeometry], allow_unverified: bool = False) -> None:
        """Run ``prove`` (this model's locality proof against its record) and keep its
        geometry. A model that does not prove is refused with one line naming the
        node; with ``allow_unverified`` it stays loaded for labels only, with the
        reason in :attr:`unverified` (every frame then says ``certified: false``)."""
        if not self.record.is_local:
            return  # view-based defenses certify through their views, not locality
        try:
            self.proof, self.unverified = prove(), None
        except (VerificationError, MissingDependencyError) as exc:
            reason = f"{self.path.name} is not proved local: {exc}"
            if not allow_unverified:
                raise PatchGuardError(
                    f"{reason}; refusing to certify with it (--allow-unverified runs it for "
                    "labels only)") from None
            self.proof, self.unverified = None, reason

    def check_output_shape(self, shape: Sequence[object]) -> None:
        """Refuse a model whose declared output disagrees with its record.

        ``shape`` is the output shape the model declares, (B, H, W, K) or
        (B, K); symbolic or unknown axes (strings, None, -1) are skipped.
        """
        expected = self.record.output_shape
        dims = list(shape)
        if len(dims) != len(expected) + 1:
            what = "local logits (B, H, W, C)" if self.record.is_local else "logits (B, C)"
            raise PatchGuardError(f"{self.path.name}: output has {len(dims)} axes, expected {what}")
        for got, want in zip(dims[1:], expected):
            if isinstance(got, (int, np.integer)) and got >= 0 and int(got) != want:
                raise PatchGuardError(self._map_mismatch(dims[1:]))

    def check_input_shape(self, shape: Sequence[object]) -> None:
        """Refuse a model whose declared input (B, C, H, W) disagrees with its record's
        channels or input size (the runtime would fail at the first frame otherwise)."""
        expected = (self.record.model_channels, *self.record.input_size)
        dims = list(shape)
        if len(dims) != 4:
            raise PatchGuardError(f"{self.path.name}: input has {len(dims)} axes, expected (B, C, H, W)")
        for got, want in zip(dims[1:], expected):
            if isinstance(got, (int, np.integer)) and got >= 0 and int(got) != want:
                raise PatchGuardError(
                    f"{self.path.name}: the graph takes {'x'.join(str(v) for v in dims[1:])} inputs but "
                    f"its metadata says {expected[0]} channels at {expected[1]}x{expected[2]}")

    def _map_mismatch(self, got: Sequence[object]) -> str:
        if not self.record.is_local:
            return (f"{self.path.name}: model outputs {'x'.join(str(v) for v in got)} values per image "
                    f"but its metadata says logits of {self.record.num_classes} classes")
        r, s = self.record.receptive_field, self.record.stride
        h, w = self.record.map_size
        return (
            f"{self.path.name}: model outputs a {'x'.join(str(v) for v in got)} map but its metadata "
            f"(r={r}, s={s}, input {self.record.input_size[0]}x{self.record.input_size[1]}, "
            f"{self.record.num_classes} classes) needs {h}x{w}x{self.record.num_classes}; "
            "refusing to certify with it"
        )

    def _check_input(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise PatchGuardError(f"infer takes a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise PatchGuardError(f"infer takes float32 input, got {batch.dtype}")
        expected = (self.record.model_channels, *self.record.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.shape[0] < 1:
            raise PatchGuardError(
                f"{self.path.name} takes batches (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(batch.shape)}"
            )
        return np.ascontiguousarray(batch)

    # -- the public face --------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) -> float32 (B, *record.output_shape): local logits or logits."""
        batch = self._check_input(batch)
        step = self.max_batch or len(batch)
        with self._lock if self.serial else contextlib.nullcontext():
            # Checked under the lock: a close() on another thread cannot slip in between.
            if self._closed:
                raise InferenceError(f"{self.path.name}: backend is closed")
            # Engines have a largest batch (their optimisation profile); larger ones run in chunks.
            try:
                parts = [self._run(batch[i:i + step]) for i in range(0, len(batch), step)]
            except InferenceError:
                raise
            except PatchGuardError as exc:  # a backend's own one-line error (CUDA's, ...)
                raise InferenceError(str(exc)) from None
            except Exception as exc:  # onnxruntime's / TensorRT's own errors: one line, file and cause
                text = str(exc).strip()
                cause = text.splitlines()[0] if text else type(exc).__name__
                raise InferenceError(f"{self.path.name}: {self.name} failed on a batch of "
                                     f"{len(batch)}: {cause}") from None
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        expected = (batch.shape[0], *self.record.output_shape)
        if tuple(out.shape) != expected:
            raise InferenceError(self._map_mismatch(out.shape[1:]))
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def infer_all(
        self,
        inputs: Union[np.ndarray, Sequence[Any]],
        batch: int = 256,
        prepare: Optional[Callable[[Any], np.ndarray]] = None,
        on_progress: Optional[Callable[[int], None]] = None,
    ) -> np.ndarray:
        """Outputs for every item of ``inputs``, ``batch`` items at a time: the one batched path.

        ``inputs``: model inputs (N, C, H, W), or anything ``prepare`` turns a slice of
        into them (frames through preprocessing, for instance), so that only one
        prepared batch is held at a time. ``on_progress(b)`` after each batch of b.
        Returns (N, *record.output_shape) float32.
        """
        if batch < 1:
            raise PatchGuardError(f"batch must be at least 1, got {batch}")
        parts = []
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            parts.append(self.infer(np.asarray(chunk) if prepare is None else prepare(chunk)))
            if on_progress is not None:
                on_progress(len(chunk))
        if not parts:
            return np.empty((0, *self.record.output_shape), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the checked, contiguous batch; return (B, *record.output_shape) outputs."""

    def _release(self) -> None:  # noqa: B027 (an optional hook: most backends hold nothing)
        """Free what the model holds (device buffers, streams); runs once, under the lock."""

    def close(self) -> None:
        """Release the model; waits for an ``infer`` running on another thread to finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} on {self.provider}>"
