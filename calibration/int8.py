"""fp32 ONNX -> INT8 QDQ ONNX, calibrated on images (onnxruntime.quantization).

Flavours, because the hardware disagrees (README.md, "INT8 (calibration/)"):

- ``tensorrt`` (default): S8S8 symmetric (activations and weights QInt8,
  zero points 0, per-channel weights). TensorRT only consumes symmetric
  signed INT8 QDQ and builds its INT8 engine from these nodes; onnxruntime
  runs it anywhere too (ARM CPUs like it), but x86 CPUs run it no faster
  than fp32. It is the default because it is the one file every backend of
  the project can use.
- ``cpu``: U8S8 (uint8 activations, int8 per-channel weights), the fast
  path of onnxruntime on x86 CPUs (BagNet-17 at batch 4 on this project's
  2-core AVX-512 VNNI machines: 4.0x fp32 quiet, 3.5x under load; the
  ``tensorrt`` flavour 0.6-0.8x). TensorRT refuses its non-zero zero points.
- ``cpu-avx2``: U8S8 with ``reduce_range`` (7-bit weights), for x86 CPUs
  without VNNI, whose int16 multiply-add (VPMADDUBSW) can saturate on full
  8-bit weights; as fast, but the coarser weights cost accuracy: on the
  bundled Fashion-MNIST model 97.0% prediction agreement with fp32 and 2.4
  points of certified accuracy (``tensorrt`` 99.0% / -0.1, ``cpu`` 98.7% / 1.1).

All are QDQ (QuantizeLinear/DequantizeLinear around float ops), the format
onnxruntime recommends and the only one TensorRT reads. The classifier head
(the per-cell Linear that produces the local logits u) stays float: the
certificate sums u over hundreds of cells, an 8-bit grid on u would show in
every bound, and the head is a negligible share of the work.

Calibration (MinMax activation ranges over the calibration images) is the slow
part; its result is cached beside the model in ``NAME.int8.FLAVOR.calib.json``
(onnxruntime's own range format, plus the key it was made for): the SHA-256
of the fp32 model bytes, the calibration data identity (file names, sizes,
mtimes, or the dataset), the number of images, the seed, the flavour and the
onnxruntime version. Any change computes the ranges afresh.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..runtime.console import progress
from ..runtime.errors import PatchGuardError, first_line, lazy_import
from ..runtime.files import atomic_path, write_text_atomic
from ..runtime.metadata import METADATA_KEY, ModelRecord
from .data import DEFAULT_SEED, CalibrationReader, calibration_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Flavor:
    """One row of the flavour table: the arguments of ``quantize_static``."""

    name: str
    activation_type: str  # name in onnxruntime.quantization.QuantType
    weight_type: str
    symmetric: bool  # symmetric activations and weights: zero points 0
    reduce_range: bool
    summary: str
    extra_options: tuple[tuple[str, Any], ...] = ()  # more quantize_static extra_options

    def options(self) -> dict[str, Any]:
        """``extra_options`` for ``quantize_static``."""
        return {"ActivationSymmetric": self.symmetric, "WeightSymmetric": True,
                **dict(self.extra_options)}

    def describe(self) -> dict[str, Any]:
        return {"flavor": self.name, "format": "QDQ", "per_channel": True,
                "activation_type": self.activation_type, "weight_type": self.weight_type,
                "symmetric": self.symmetric, "reduce_range": self.reduce_range,
                "options": dict(self.extra_options)}


FLAVORS: dict[str, Int8Flavor] = {
    "tensorrt": Int8Flavor("tensorrt", "QInt8", "QInt8", symmetric=True, reduce_range=False,
                           summary="S8S8 symmetric QDQ, zero points 0: what TensorRT builds INT8 "
                                   "engines from; runs in onnxruntime too, no faster than fp32 "
                                   "on x86",
                           # TensorRT's explicit-quantization layout (as NVIDIA's ModelOpt
                           # asks of onnxruntime): float bias (TensorRT has no INT32
                           # DequantizeLinear), float weights behind their own Q/DQ pair,
                           # one Q/DQ pair per consumer so each fusion stays local.
                           extra_options=(("QuantizeBias", False), ("AddQDQPairToWeight", True),
                                          ("DedicatedQDQPair", True))),
    "cpu": Int8Flavor("cpu", "QUInt8", "QInt8", symmetric=False, reduce_range=False,
                      summary="U8S8 QDQ: the fastest in onnxruntime on x86 CPUs with VNNI "
                              "(AVX-512 VNNI / AVX-VNNI); TensorRT cannot use it"),
    "cpu-avx2": Int8Flavor("cpu-avx2", "QUInt8", "QInt8", symmetric=False, reduce_range=True,
                           summary="U8S8 QDQ with reduce_range (7-bit weights): for x86 CPUs "
                                   "without VNNI, where full 8-bit weights may saturate; a little "
                                   "less accurate"),
}
# The default works on every backend of the project (TensorRT needs it, onnxruntime
# runs it); the cpu flavours are an explicit opt-in for onnxruntime speed on x86.
DEFAULT_FLAVOR = "tensorrt"
FLAVOR_HELP = (
    f"INT8 flavour (default {DEFAULT_FLAVOR}): 'tensorrt' = S8S8 symmetric QDQ, zero points 0, "
    "what TensorRT engines are built from (runs in onnxruntime too, not faster on x86); "
    "'cpu' = U8S8 QDQ, the fastest in onnxruntime on x86 CPUs with VNNI; 'cpu-avx2' = U8S8 "
    "with 7-bit weights for x86 CPUs without VNNI. Only 'tensorrt' can become an engine."
)
CALIB_BATCH = 16


def get_flavor(name: str) -> Int8Flavor:
    """The flavour called ``name``, or an error listing the known ones."""
    if name not in FLAVORS:
        raise PatchGuardError(f"unknown INT8 flavour {name!r}; known: {', '.join(FLAVORS)}")
    return FLAVORS[name]


def int8_path(fp32_onnx: Path) -> Path:
    """``NAME.onnx`` -> ``NAME.int8.onnx`` (the name pg-export writes)."""
    return fp32_onnx.with_name(f"{fp32_onnx.name.removesuffix('.onnx')}.int8.onnx")


def cache_path(out: Path, flavor_name: str, cache_dir: Path) -> Path:
    """``NAME.int8.onnx`` -> ``cache_dir/NAME.int8.FLAVOR.calib.json``."""
    return Path(cache_dir) / f"{out.name.removesuffix('.onnx')}.{flavor_name}.calib.json"


def calibration_key(model_bytes: bytes, identity: dict[str, Any], flavor_name: str) -> str:
    """SHA-256 over everything the activation ranges depend on."""
    ort = lazy_import("onnxruntime", "cpu")
    payload = {
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "data": identity,
        "flavor": flavor_name,
        "onnxruntime": ort.__version__,  # tensor names come from its graph optimiser
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cached(path: Path, key: str) -> bool:
    try:
        return json.loads(path.read_text()).get("patchguard_key") == key
    except (OSError, ValueError, AttributeError):
        return False


def _supports_cache(quantize_static: Any) -> bool:
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _input_name(model: Any) -> str:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise PatchGuardError(f"expected a model with one image input, found {len(inputs)}")
    return inputs[0]


def float_head(model: Any) -> list[str]:
    """Names of the nodes from the graph output back to the classifier (MatMul/Gemm/Conv).

    These stay float (see the module docstring). Nodes without a name cannot be
    excluded by name and are left to the quantizer.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    node = producer.get(model.graph.output[0].name)
    while node is not None:
        if node.name:
            names.append(node.name)
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            break
        node = producer.get(node.input[0]) if node.input else None
    return names


@contextlib.contextmanager
def _onnxruntime_says(what: str) -> Iterator[None]:
    """onnxruntime's INFO chatter muted; its exceptions turned into one-line errors."""
    logger = logging.getLogger("onnxruntime")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    except PatchGuardError:
        raise
    except Exception as exc:  # onnxruntime raises many kinds (ValueError, KeyError, its own)
        raise PatchGuardError(f"{what} failed: {first_line(exc)}") from None
    finally:
        logger.setLevel(level)


def _label(model: Any, fp32: Any, record: ModelRecord, meta: dict[str, Any]) -> None:
    """Copy the fp32 model's metadata and add precision and flavour to ``patchguard``."""
    props = {p.key: p.value for p in fp32.metadata_props}
    try:
        info = json.loads(props.get(METADATA_KEY, ""))
    except ValueError:
        info = None
    if not isinstance(info, dict):
        info = record.to_dict()
    info.update(precision="int8", int8=meta)
    props[METADATA_KEY] = json.dumps(info, sort_keys=True)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = fp32.producer_name or model.producer_name
    model.doc_string = fp32.doc_string


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    record: ModelRecord,
    calib_data: str,
    calib_size: int,
    flavor: str,
    cache_dir: Path,
) -> Path:
    """Write the INT8 QDQ model of ``fp32_onnx`` to ``out`` (atomically); return ``out``.

    ``calib_data`` is a folder of images or ``"fashion-mnist"``; ``calib_size``
    images are drawn from it (seeded) and preprocessed with ``record``.
    ``flavor`` is a key of :data:`FLAVORS`. The activation ranges are cached
    in ``cache_dir`` (see the module docstring). The output keeps the fp32
    model's metadata; its ``patchguard`` JSON gains ``"precision": "int8"``
    and ``"int8": {...}`` (flavour, types, calibration data).
    """
    chosen = get_flavor(flavor)
    onnx = lazy_import("onnx", "onnx")
    quant = lazy_import("onnxruntime.quantization", "cpu")
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    try:
        model_bytes = fp32_onnx.read_bytes()
    except OSError as exc:
        raise PatchGuardError(f"cannot read {fp32_onnx}: {exc.strerror or exc}") from None
    try:
        fp32 = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise PatchGuardError(f"{fp32_onnx} is not an ONNX model: {first_line(exc, 200)}") from None
    source = calibration_source(calib_data, calib_size, DEFAULT_SEED)
    key = calibration_key(model_bytes, source.identity(), chosen.name)
    cache = cache_path(out, chosen.name, Path(cache_dir))
    can_cache = _supports_cache(quant.quantize_static)
    hit = can_cache and cache.is_file() and _cached(cache, key)

    with tempfile.TemporaryDirectory(prefix="pg-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph optimisation first, as onnxruntime advises;
        # it folds BatchNorm into Conv so fewer tensors need ranges.
        with _onnxruntime_says(f"preparing {fp32_onnx.name} for quantization"):
            quant.quant_pre_process(str(fp32_onnx), str(pre))
        head = float_head(onnx.load(str(pre)))
        ranges = cache if hit else Path(tmp) / "ranges.json"
        log.info("INT8 %s: %s", chosen.name,
                 f"calibration cache hit ({cache})" if hit else
                 f"calibrating on up to {calib_size} images from {source.name}")
        bar = None if hit else progress(min(calib_size, len(source.files) or calib_size),
                                        "calibrating")
        reader = None if hit else CalibrationReader(
            source, record, _input_name(fp32), CALIB_BATCH, bar)
        kwargs = {"calibration_cache_path": str(ranges)} if can_cache else {}
        quantized = Path(tmp) / "int8.onnx"
        try:
            with _onnxruntime_says(f"INT8 quantization of {fp32_onnx.name}"):
                quant.quantize_static(
                    str(pre), str(quantized), reader,
                    quant_format=quant.QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=chosen.reduce_range,
                    activation_type=getattr(quant.QuantType, chosen.activation_type),
                    weight_type=getattr(quant.QuantType, chosen.weight_type),
                    calibrate_method=quant.CalibrationMethod.MinMax,
                    nodes_to_exclude=head,
                    extra_options=chosen.options(),
                    **kwargs,
                )
        finally:
            if bar is not None:
                bar.close()
        if not can_cache:
            log.info("this onnxruntime cannot reuse calibration ranges; no cache written")
        elif not hit:
            payload = json.loads(ranges.read_text())
            payload["patchguard_key"] = key
            payload["patchguard_images"] = reader.images if reader is not None else None
            write_text_atomic(cache, json.dumps(payload))
        model = onnx.load(str(quantized))
    meta = {**chosen.describe(), "float_nodes": head, "calib_data": source.name,
            "calib_images": reader.images if reader is not None else _cached_images(cache)}
    _label(model, fp32, record, meta)
    with atomic_path(out) as tmp_out:
        onnx.save(model, str(tmp_out))
    return out


def _cached_images(cache: Path) -> Optional[int]:
    try:
        return json.loads(cache.read_text()).get("patchguard_images")
    except (OSError, ValueError):
        return None
