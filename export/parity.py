"""Parity report: does each exported artifact compute what the PyTorch model does?

For every artifact (fp32 / fp16 / int8 ONNX, TensorRT engine) the local
logits u (N, H, W, K) on the same N inputs are compared with a reference
(the PyTorch model, or the fp32 ONNX when exporting from ONNX without torch):

- ``max_abs`` = max |u - u_ref|; ``max_rel`` = max_abs / max |u_ref|;
- agreement of robust-masking predictions (Algorithm 1) and of certificates
  (Algorithm 2, each map's own prediction) with the mask window of the
  record's default patch, T = 0, no clipping (:mod:`.agreement`, which also
  holds the bars a reduced-precision artifact must meet).

For a view defense's classifier (README.md, "View defenses") the comparison runs
through the views: every view a frame can need (PatchCleanser: all two-mask
views) is scored by the reference and by the artifact, and the defense's
decisions and certificates from both sets of logits are compared
(:func:`view_logits`, :func:`compare_views`).

Torch-free: the caller passes reference logits and backends.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..runtime.errors import PatchGuardError
from ..runtime.files import PathText, write_text_atomic
from ..runtime.metadata import ModelRecord
from ..runtime.views import ViewRunner, score_views, view_runner
from .agreement import Agreement, measure

# Largest max_rel each precision may show; fp32 beyond it fails the export.
TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2, "int8": None}
# TensorRT may pick TF32 kernels for an fp32 engine on Ampere and newer.
ENGINE_FP32_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ParityRow:
    artifact: str
    precision: str
    backend: str
    n: int
    max_abs: float
    max_rel: float
    tolerance: Optional[float]
    within_tolerance: Optional[bool]
    prediction_agreement: float
    certificate_agreement: float
    # Share of inputs whose OWN robust-masking prediction is certified (no labels here:
    # this is not certified accuracy), by the reference and by the artifact.
    own_prediction_certified_reference: float
    own_prediction_certified_artifact: float

    @property
    def agreement(self) -> Agreement:
        """The row's decision measures, to judge against the bars (:meth:`Agreement.shortfall`)."""
        return Agreement(self.n, self.prediction_agreement, self.certificate_agreement,
                         self.own_prediction_certified_reference, self.own_prediction_certified_artifact)


def parity_window(record: ModelRecord) -> int:
    """Mask window (cells) of the record's reference patch; refused when it does not fit the map."""
    return record.window_for(record.reference_patch_px, " (the record's default patch)")[0]


def _errors(artifact: str, reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max_abs, max_rel) of ``candidate`` against ``reference``; refuses different shapes."""
    if reference.shape != candidate.shape:
        raise PatchGuardError(f"{artifact} gives logits {candidate.shape}, the reference {reference.shape}")
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel


def _row(artifact: str, precision: str, backend_name: str, errors: tuple[float, float],
         tolerance: Optional[float], agreement: Agreement) -> ParityRow:
    max_abs, max_rel = errors
    within = None if tolerance is None else bool(max_rel <= tolerance)
    return ParityRow(artifact, precision, backend_name, agreement.n, max_abs, max_rel, tolerance, within,
                     agreement.prediction_agreement, agreement.certificate_agreement,
                     agreement.certified_reference, agreement.certified_candidate)


def compare_maps(
    artifact: str,
    precision: str,
    backend_name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    window: int,
    tolerance: Optional[float],
) -> ParityRow:
    """A report row for a local-logit model: errors and robust-masking agreement of the
    ``candidate`` maps (N, H, W, C) vs the ``reference`` maps (:func:`compare_views` for view defenses)."""
    errors = _errors(artifact, reference, candidate)
    return _row(artifact, precision, backend_name, errors, tolerance, measure(reference, candidate, window))


def parity_runner(record: ModelRecord, score: Callable[[np.ndarray], np.ndarray],
                  max_batch: Optional[int] = None) -> ViewRunner:
    """The view defense of ``record`` against its default patch, scoring with ``score``."""
    patch = record.reference_patch_px
    return view_runner(record, (patch, patch), score, max_batch)


def view_logits(record: ModelRecord, score: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
                max_batch: Optional[int] = None) -> np.ndarray:
    """Logits (N, V, K) of every view of each input (N, C, H, W), frame by frame (bounded memory)."""
    runner = parity_runner(record, score, max_batch)
    out = [score_views(score, runner.all_views(inputs[n : n + 1]), max_batch) for n in range(len(inputs))]
    return np.stack(out).astype(np.float32)


def compare_views(artifact: str, precision: str, backend_name: str, record: ModelRecord,
                  reference: np.ndarray, candidate: np.ndarray, tolerance: Optional[float]) -> ParityRow:
    """A report row for a view defense: logits of all views, and the defense's decisions from them."""
    errors = _errors(artifact, reference, candidate)
    runner = parity_runner(record, lambda v: v)
    pred_ref, c_ref = runner.from_logits(reference)
    pred_art, c_art = runner.from_logits(candidate)
    agreement = Agreement.of((pred_ref, pred_art), (c_ref, c_art))
    return _row(artifact, precision, backend_name, errors, tolerance, agreement)


def format_table(rows: Sequence[ParityRow]) -> str:
    """A small fixed-width table for the terminal."""
    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    width = max([len("artifact")] + [len(row.artifact) for row in rows])
    header = f"{'artifact':<{width}} {'prec':<5} {'n':>4} {'max abs':>10} {'max rel':>10} {'tol':>8} " \
             f"{'ok':>3} {'pred agree':>10} {'cert agree':>10} {'own-pred certified ref/art':>26}"
    lines = [header, "-" * len(header)]
    for row in rows:
        ok = "-" if row.within_tolerance is None else ("yes" if row.within_tolerance else "NO")
        tol = "-" if row.tolerance is None else f"{row.tolerance:.0e}"
        certified = f"{pct(row.own_prediction_certified_reference)}/{pct(row.own_prediction_certified_artifact)}"
        lines.append(
            f"{row.artifact:<{width}} {row.precision:<5} {row.n:>4} {row.max_abs:>10.3g} {row.max_rel:>10.3g} "
            f"{tol:>8} {ok:>3} {pct(row.prediction_agreement):>10} {pct(row.certificate_agreement):>10} "
            f"{certified:>26}"
        )
    lines.append("pred/cert agree: share of inputs where the artifact's robust-masking label / certificate "
                 "equals the reference's; own-pred certified: share whose own label is certified "
                 "(not certified accuracy: no labels here)")
    return "\n".join(lines)


def write_report(
    path: PathText, rows: Sequence[ParityRow], record: ModelRecord, reference: str,
    inputs: str, window: int, proofs: Optional[dict[str, Any]] = None,
) -> None:
    """``NAME.parity.json``: the rows plus what they were measured against, and the
    geometry each ONNX artifact's graph proves (``proofs``: file name -> ProvedGeometry)."""
    if record.is_local:
        data = {
            "reference": reference, "inputs": inputs, "window": [window, window],
            "defense": "mask", "thres": 0.0, "clip": None, "arch": record.arch,
            "input_size": list(record.input_size), "map_size": list(record.map_size),
            "receptive_field": record.receptive_field, "stride": record.stride,
            "proved_geometry": {name: proof.to_dict() for name, proof in (proofs or {}).items()},
            "rows": [asdict(r) for r in rows],
        }
    else:
        data = {
            "reference": reference, "inputs": inputs, "defense": record.to_dict()["defense"],
            "arch": record.arch, "input_size": list(record.input_size),
            "compared": "logits of every view, and the defense's labels and certificates from them",
            "rows": [asdict(r) for r in rows],
        }
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def parity_inputs(record: ModelRecord, data: Optional[str], n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """N model inputs (N, C, H, W) float32 and a description of where they came from.

    ``data``: "fashion-mnist" (its test images, at the model's size and channels),
    an image folder, or None (Fashion-MNIST test images when the model takes
    28x28 gray and they are installed, else random inputs).
    """
    from ..runtime.datasets import FASHION_MNIST, fashion_mnist_available, fits_fashion_mnist, load_labelled
    from ..runtime.preprocess import normalize

    if n < 1:
        raise PatchGuardError(f"--parity-n must be at least 1, got {n}")
    if data == FASHION_MNIST or (data is None and fits_fashion_mnist(record) and fashion_mnist_available()):
        found = load_labelled(FASHION_MNIST, record, "test", n)  # resized for models of other inputs
        return normalize(found.images, record), f"{found.description}[:{len(found.images)}]"
    if data is not None:
        from ..runtime.preprocess import preprocess
        from ..runtime.sources import list_images, read_image

        frames = [f for f in (read_image(p) for p in list_images(data)[: 4 * n]) if f is not None][:n]
        if not frames:
            raise PatchGuardError(f"--parity-data {data}: no readable images there")
        return preprocess(frames, record), f"{len(frames)} images from {data}"
    rng = np.random.default_rng(seed)
    shape = (n, record.in_channels, *record.input_size)
    return rng.standard_normal(shape).astype(np.float32), f"{n} random inputs (seed {seed})"
