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
(onnxruntime's own range format, written by ``quantize_static``'s
``calibration_cache_path``, plus the key it was made for): the SHA-256 of the
fp32 model bytes, the calibration data identity (file names, sizes, mtimes, or
the dataset), the number of images, the seed, the flavour and the onnxruntime
version. Any change computes the ranges afresh.

Models in, model out (Polygraphy's loaders): :func:`quantize_int8` takes an
``onnx.ModelProto`` and a :class:`~.data.CalibrationReader` and returns the QDQ
``ModelProto``; loading, labelling (the record, ``precision`` and
:func:`int8_metadata`) and saving are the export stage's
(``patchguard.export.pipeline.write_int8``, ``export/onnxfile.py``).
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

from ..runtime.errors import PatchGuardError, first_line, lazy_import
from ..runtime.files import PathText, write_text_atomic
from .data import CalibrationReader

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


def quantize_int8(model: Any, reader: CalibrationReader, flavor: str, *,
                  cache: Optional[PathText] = None) -> Any:
    """The INT8 QDQ ``onnx.ModelProto`` of the fp32 ``model``, calibrated on ``reader``'s batches.

    ``flavor`` is a key of :data:`FLAVORS`. With ``cache`` (a file, :func:`cache_path`)
    the activation ranges are reused when it was made for the same model bytes,
    calibration data, flavour and onnxruntime, and written otherwise (see the module
    docstring); a hit reads no image. ``reader.images`` then says how many images the
    ranges come from. The result is not labelled (it keeps whatever metadata onnxruntime
    carries over): the caller labels it (:func:`int8_metadata`) and saves it.
    """
    chosen = get_flavor(flavor)
    onnx = lazy_import("onnx", "onnx")
    quant = lazy_import("onnxruntime.quantization", "cpu")
    model_bytes = model.SerializeToString()
    key = calibration_key(model_bytes, reader.source.identity(), chosen.name)
    cache_file = None if cache is None else Path(cache)
    if cache_file is not None and not _supports_cache(quant.quantize_static):
        log.info("this onnxruntime cannot reuse calibration ranges; no cache written")
        cache_file = None
    cached = cache_file if cache_file is not None and cache_file.is_file() and _cached(cache_file, key) else None

    with tempfile.TemporaryDirectory(prefix="pg-int8-") as tmp:
        given, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        given.write_bytes(model_bytes)  # onnxruntime's pre-processing reads a file on every version
        # Shape inference and graph optimisation first, as onnxruntime advises;
        # it folds BatchNorm into Conv so fewer tensors need ranges.
        with _onnxruntime_says("preparing the model for INT8 quantization"):
            quant.quant_pre_process(str(given), str(pre))
        head = float_head(onnx.load(str(pre)))
        ranges = cached or Path(tmp) / "ranges.json"
        log.info("INT8 %s: %s", chosen.name,
                 f"calibration cache hit ({cached})" if cached else
                 f"calibrating on up to {reader.source.size} images from {reader.source.name}")
        kwargs = {"calibration_cache_path": str(ranges)} if cache_file is not None else {}
        quantized = Path(tmp) / "int8.onnx"
        try:
            with _onnxruntime_says("INT8 quantization"):
                quant.quantize_static(
                    str(pre), str(quantized), None if cached else reader,
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
            reader.close()
        if cached:
            reader.images = _cached_images(cached)
        elif cache_file is not None:
            payload = json.loads(ranges.read_text())
            payload["patchguard_key"] = key
            payload["patchguard_images"] = reader.images
            write_text_atomic(cache_file, json.dumps(payload))
        return onnx.load(str(quantized))


def int8_metadata(model: Any, flavor: str, reader: CalibrationReader) -> dict[str, Any]:
    """The ``int8`` entry of a quantized model's record: the flavour's settings, the nodes
    kept float, and the calibration data and image count."""
    return {**get_flavor(flavor).describe(), "float_nodes": float_head(model),
            "calib_data": reader.source.name, "calib_images": reader.images}


def _cached_images(cache: Path) -> Optional[int]:
    try:
        value = json.loads(cache.read_text()).get("patchguard_images")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
