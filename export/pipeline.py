"""The export chain after the fp32 ONNX exists: probe -> fp16 -> int8 -> engine -> parity.

Loaders build (Polygraphy style): each step is one small call from the
modules beside this one; this module only orders them and stages the files.
Everything is written into a hidden staging folder inside ``--out`` and
committed at the very end with a manifest (:mod:`patchguard.runtime.artifacts`),
so a failed or killed export (probe refused, parity out of tolerance, TensorRT
error, SIGKILL) leaves the earlier set of artifacts, or the whole new one.

Torch-free: the PyTorch reference, when there is one, arrives as a callable.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..runtime.artifacts import Staging, manifest_name
from ..runtime.backends.base import Backend
from ..runtime.backends.onnxrt import OnnxRuntimeBackend
from ..runtime.errors import PatchGuardError
from ..runtime.metadata import ModelRecord
from ..runtime.verify import ProvedGeometry, VerificationError, verify
from . import parity as parity_mod
from .bnfold import fold_batchnorm
from .onnxfile import copy_metadata, input_name, load_onnx, precision_of, save_onnx, set_record
from .probe import ProbeReport, probe_locality

log = logging.getLogger(__name__)
Reference = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExportOptions:
    """What pg-export was asked for, beyond the model itself."""

    out: Path
    name: str
    fp16: bool = False
    int8: bool = False
    calib_data: Optional[str] = None
    calib_size: int = 256
    int8_flavor: Optional[str] = None  # None: "tensorrt" when an engine is built, else "cpu"
    max_batch: int = 8
    tf32: bool = True  # fp32 engines may use TF32 products (TensorRT's default); False: --no-tf32
    engine: Optional[bool] = None  # None: build when possible; True: must; False: never
    parity_data: Optional[str] = None
    parity_n: int = 16
    allow_parity_drift: bool = False  # write fp16/int8 artifacts whose decisions drift anyway


@dataclass
class ExportResult:
    record: ModelRecord
    files: list[Path] = field(default_factory=list)
    rows: list[parity_mod.ParityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probe: Optional[ProbeReport] = None
    # The locality each ONNX artifact's graph proves (runtime/verify.py), by file name.
    proofs: dict[str, ProvedGeometry] = field(default_factory=dict)


def artifact_names(name: str) -> dict[str, str]:
    return {
        "fp32": f"{name}.onnx", "fp16": f"{name}.fp16.onnx", "int8": f"{name}.int8.onnx",
        "engine": f"{name}.plan", "sidecar": f"{name}.plan.json", "parity": f"{name}.parity.json",
        "manifest": manifest_name(name),
    }


def write_int8(fp32: Path, target: Path, record: ModelRecord, calib_data: str, calib_size: int,
               flavor: str, cache_dir: Path) -> Path:
    """Load ``fp32``, quantize it (calibration/) on a seeded draw of ``calib_size`` images from
    ``calib_data`` (a folder or ``fashion-mnist``), label it and save it to ``target``, atomically.

    The label is the fp32 model's metadata with ``record`` plus ``"precision": "int8"`` and
    ``"int8": {...}`` (flavour, float nodes, calibration data); the activation ranges are
    cached in ``cache_dir`` (``NAME.int8.FLAVOR.calib.json``).
    """
    try:
        from ..calibration.data import CalibrationReader, calibration_source
        from ..calibration.int8 import cache_path, get_flavor, int8_metadata, quantize_int8
    except ImportError as exc:
        raise PatchGuardError(f"--int8 needs patchguard.calibration.int8 ({exc})") from None
    get_flavor(flavor)  # an unknown flavour fails before any image is listed
    model = load_onnx(fp32)
    reader = CalibrationReader(calibration_source(calib_data, calib_size), record, input_name(model))
    int8 = quantize_int8(model, reader, flavor, cache=cache_path(target, flavor, cache_dir))
    copy_metadata(model, int8)
    set_record(int8, record, precision="int8", int8=int8_metadata(int8, flavor, reader))
    return save_onnx(int8, target)


def _int8(fp32: Path, target: Path, record: ModelRecord, options: ExportOptions, flavor: str) -> None:
    from ..runtime.datasets import fits_fashion_mnist

    calib = options.calib_data
    if calib is None:
        if not fits_fashion_mnist(record):
            raise PatchGuardError("--int8 needs --calib-data DIR (images like the deployment's)")
        calib = "fashion-mnist"
    # The activation ranges are cached next to the model (NAME.int8.FLAVOR.calib.json in --out).
    write_int8(fp32, target, record, calib, options.calib_size, flavor, options.out)


def _open(path: Path) -> Backend:
    if path.suffix == ".plan":
        from ..runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(path)
    return OnnxRuntimeBackend(path)


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _convert(fp32_onnx: Path, record: ModelRecord, options: ExportOptions, staging: Staging,
             flavor: str) -> list[tuple[str, str, Path]]:
    """The fp16 / int8 ONNX files asked for: (file name, precision, staged path)."""
    from .fp16 import to_fp16

    names = artifact_names(options.name)
    # A given ONNX (--onnx) may still hold BatchNormalization: fold it before fp16 (bnfold.py).
    given = fold_batchnorm(load_onnx(fp32_onnx))
    precision = precision_of(given)
    made = [(names["fp32"], precision, fp32_onnx)] if staging.dir in fp32_onnx.parents else []
    for flag, wanted in (("--fp16", options.fp16), ("--int8", options.int8)):
        if wanted and precision != "fp32":
            raise PatchGuardError(f"{flag} needs an fp32 ONNX; {fp32_onnx.name} is {precision}")
    if options.fp16:
        save_onnx(to_fp16(given), staging.path(names["fp16"]))
        made.append((names["fp16"], "fp16", staging.path(names["fp16"])))
    del given
    if options.int8:
        _int8(fp32_onnx, staging.path(names["int8"]), record, options, flavor)
        made.append((names["int8"], "int8", staging.path(names["int8"])))
    return made


def _engine(fp32_onnx: Path, record: ModelRecord, options: ExportOptions, staging: Staging,
            flavor: str, reason: Optional[str], result: ExportResult) -> Optional[tuple[str, str, Path]]:
    """Build NAME.plan from the lowest precision ONNX asked for, or say why not."""
    from .engine import build_engine

    names = artifact_names(options.name)
    if options.engine is False:
        result.notes.append("no TensorRT engine built (--no-engine)")
        return None
    if reason is not None:
        if options.engine:
            raise PatchGuardError(f"--engine: cannot build a TensorRT engine: {reason}")
        result.notes.append(f"no TensorRT engine built: {reason}")
        return None
    source = fp32_onnx
    if options.int8 and flavor == "tensorrt":
        source = staging.path(names["int8"])
    elif options.fp16:
        source = staging.path(names["fp16"])
    if options.int8 and flavor != "tensorrt":
        result.notes.append(f"engine built from {source.name}: the {flavor} int8 flavour is not for TensorRT")
    info = build_engine(source, staging.path(names["engine"]), options.max_batch, record, tf32=options.tf32)
    return names["engine"], info.precision, staging.path(names["engine"])


def _parity(artifacts: list[tuple[str, str, Path]], fp32_onnx: Path, record: ModelRecord,
            options: ExportOptions, staging: Staging, reference: Optional[Reference],
            reference_label: str,
            proofs: Optional[dict[str, ProvedGeometry]] = None) -> list[parity_mod.ParityRow]:
    """Compare every artifact with the reference, write NAME.parity.json, refuse a bad fp32."""
    inputs, inputs_label = parity_mod.parity_inputs(record, options.parity_data, options.parity_n)
    views = not record.is_local
    window = 0 if views else parity_mod.parity_window(record)

    def outputs(score: Reference, max_batch: Optional[int] = None) -> np.ndarray:
        # A view defense is compared on every view of each input, not on the inputs.
        if views:
            return parity_mod.view_logits(record, score, inputs, max_batch)
        return score(inputs)

    if reference is None:
        with OnnxRuntimeBackend(fp32_onnx) as base:
            expected = outputs(base.infer) if views else base.infer_all(inputs, options.max_batch)
        reference_label = f"{fp32_onnx.name} in onnxruntime"
    else:
        expected = outputs(reference)
    rows = []
    proofs = dict(proofs or {})
    for label, precision, path in artifacts:
        tolerance = parity_mod.TOLERANCE.get(precision)
        if path.suffix == ".plan" and precision == "fp32" and options.tf32:
            tolerance = parity_mod.ENGINE_FP32_TOLERANCE  # TF32 products; --no-tf32 keeps fp32's
        with _open(path) as backend:
            if views:
                got = outputs(backend.infer, backend.max_batch)
                rows.append(parity_mod.compare_views(label, precision, backend.name, record, expected, got,
                                                     tolerance))
            else:
                got = backend.infer_all(inputs, options.max_batch)
                rows.append(parity_mod.compare_maps(label, precision, backend.name, expected, got, window,
                                                    tolerance))
            if backend.proof is not None:  # every ONNX artifact proved at open (verify.py)
                proofs[label] = backend.proof
    parity_mod.write_report(staging.path(artifact_names(options.name)["parity"]), rows, record,
                            reference_label, inputs_label, window, proofs)
    for row in rows:
        if row.precision == "fp32" and row.artifact.endswith(".onnx") and row.within_tolerance is False:
            raise PatchGuardError(
                f"{row.artifact} differs from {reference_label}: max relative error "
                f"{row.max_rel:.3g} > {row.tolerance:g}; export refused"
            )
    return rows


def parity_drift(rows: list[parity_mod.ParityRow], reference: str = "the reference") -> list[str]:
    """One line per reduced-precision artifact whose defense decisions drift from the reference's
    beyond the bars of :mod:`.agreement`, with one input of slack on each (a single flipped
    decision of a 16-input report is noise; a broken calibration is far beyond it)."""
    return [line for row in rows if row.precision != "fp32"
            and (line := row.agreement.shortfall(row.artifact, reference, slack=1)) is not None]


def finish_export(
    fp32_onnx: Path,
    record: ModelRecord,
    options: ExportOptions,
    staging: Staging,
    reference: Optional[Reference],
    reference_label: str,
    fresh_weights: bool = True,
) -> ExportResult:
    """Probe, convert, build and compare; then commit the staged files.

    ``fp32_onnx``: the model as exported (in the staging folder) or as given
    (``--onnx``). ``reference``: PyTorch logits of a batch, or None to compare
    against ``fp32_onnx`` in onnxruntime. Without onnxruntime (a bare Jetson),
    the ``--onnx`` route skips probe and parity: the probe ran when the ONNX
    was exported, and the runtime checks the map size again.
    """
    from .engine import engine_unavailable_reason

    result = ExportResult(record)
    if record.is_local:
        # The static proof first: it needs only onnx, and names the node that mixes positions.
        try:
            result.proofs[fp32_onnx.name] = verify(fp32_onnx, record)
        except VerificationError as exc:
            raise PatchGuardError(f"{fp32_onnx.name} is not proved local: {exc}; export refused") from None
        result.notes.append(f"locality proved from the graph: {result.proofs[fp32_onnx.name].describe()}")
    checks = reference is not None or _has_onnxruntime()
    if checks and not record.is_local:
        result.notes.append(f"{record.defense_kind} defense: an ordinary classifier, any receptive field "
                            "(no locality probe)")
    elif checks:
        result.probe = probe_locality(fp32_onnx, record)
        log.info("locality probe passed: %s map, no change outside the r=%d receptive field",
                 "x".join(map(str, record.map_size)), record.receptive_field)
    else:
        result.notes.append("onnxruntime is not installed: locality probe and parity report skipped")
    reason = None if options.engine is False else engine_unavailable_reason()
    flavor = options.int8_flavor or ("tensorrt" if options.engine is not False and reason is None else "cpu")
    artifacts = _convert(fp32_onnx, record, options, staging, flavor)
    engine = _engine(fp32_onnx, record, options, staging, flavor, reason, result)
    if engine is not None:
        artifacts.append(engine)
    if checks:
        result.rows = _parity(artifacts, fp32_onnx, record, options, staging, reference, reference_label,
                              result.proofs)
        drift = parity_drift(result.rows, reference_label or "the fp32 ONNX")
        if drift and not options.allow_parity_drift:
            # Before the commit: a model that decides differently is not written at all.
            raise PatchGuardError(
                f"{drift[0]}; export refused, no model file written (calibrate on images like the "
                "deployment's, or pass --allow-parity-drift to write it anyway)")
        result.notes.extend(f"warning: {line}; written because of --allow-parity-drift" for line in drift)
    # A fresh PyTorch export makes older artifacts of the same name stale (an old
    # engine beside new weights would run the wrong model): they are removed, with a
    # warning each. From --onnx they stay, and join the new manifest.
    names = artifact_names(options.name)
    earlier = [names[k] for k in ("fp32", "fp16", "int8", "engine", "sidecar", "parity")
               if (options.out / names[k]).is_file() and not staging.path(names[k]).exists()]
    remove, keep = (earlier, []) if fresh_weights else ([], earlier)
    for filename in remove:
        result.notes.append(f"warning: removed {options.out / filename}, left from an earlier export "
                            "of this name (it belongs to other weights); ask for it again to rebuild it")
    result.notes.extend(staging.notes)
    result.files = staging.commit(keep=keep, remove=remove)
    return result


def run_export(
    options: ExportOptions,
    record: ModelRecord,
    write_fp32: Optional[Callable[[Path], object]] = None,
    onnx_path: Optional[Path] = None,
    reference: Optional[Reference] = None,
    reference_label: str = "",
) -> ExportResult:
    """The whole export into ``options.out``, all or nothing.

    Either ``write_fp32`` writes the fp32 ONNX to the path it is given (the
    PyTorch route), or ``onnx_path`` names an existing one (the torch-free
    route, e.g. on a Jetson).
    """
    if (write_fp32 is None) == (onnx_path is None):
        raise PatchGuardError("run_export needs either write_fp32 or onnx_path")
    with Staging(options.out, options.name) as staging:
        if write_fp32 is not None:
            fp32 = staging.path(artifact_names(options.name)["fp32"])
            write_fp32(fp32)
        else:
            assert onnx_path is not None  # checked above: exactly one of the two is given
            fp32 = Path(onnx_path)
        return finish_export(fp32, record, options, staging, reference, reference_label,
                             fresh_weights=write_fp32 is not None)
