"""ONNX -> TensorRT engine (``NAME.plan`` + ``NAME.plan.json``), torch-free.

Engines run only on the TensorRT version and GPU family that built them, so
this step runs on the target itself (``pg-export --onnx model.onnx`` on the
Jetson). Every network is strongly typed, so the precision comes from the
ONNX graph, never from a builder flag:

- fp32 graph -> fp32 engine;
- fp16 graph (``NAME.fp16.onnx``) -> fp16 engine;
- QDQ graph (``NAME.int8.onnx``) -> int8 engine.

TensorRT 11 removed ``BuilderFlag.FP16``/``INT8`` and the calibrators and
always builds strongly typed networks (its ``STRONGLY_TYPED`` creation flag is
deprecated and ignored, so it is not passed). TensorRT 10 (JetPack 6.1/6.2
ship 10.3) still has the flags, and weak typing is deprecated since 10.12; it
gets ``1 << STRONGLY_TYPED`` for every precision, so 10 and 11 take one path
and build the same engine from the same file.

TF32: on Ampere and newer GPUs (every Orin) TensorRT lets fp32 convolutions
and matrix products round their inputs to TF32 (10-bit mantissa) unless
``BuilderFlag.TF32`` is cleared; ``tf32=False`` (``pg-export --no-tf32``)
clears it for full fp32 products. fp16 and int8 engines are not affected.

One optimisation profile covers batch 1..max_batch (optimised for batch 1, the
per-frame camera case). BatchNormalization is folded into the convolutions
before parsing (:mod:`.bnfold`): TensorRT 10.3's parser predates strongly typed
mixed-precision BatchNormalization.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ..runtime.backends.cuda import cuda_unavailable_reason, device_facts
from ..runtime.backends.tensorrt import tensorrt_module
from ..runtime.errors import MissingDependencyError, PatchGuardError
from ..runtime.files import PathText, atomic_path, write_text_atomic
from ..runtime.metadata import EngineInfo, ModelRecord, sidecar_path, sidecar_text
from ..runtime.verify import VerificationError, onnx_digest, verify
from .bnfold import fold_batchnorm
from .onnxfile import get_record, load_onnx, precision_of

log = logging.getLogger(__name__)

# Every TensorRT attribute the builder touches (the runtime's list is in
# runtime/backends/tensorrt.py); tests check them wherever tensorrt imports.
TRT_BUILD_ATTRIBUTES = (
    "__version__",
    "Logger", "Logger.WARNING",
    "Builder", "Builder.create_network", "Builder.create_builder_config",
    "Builder.create_optimization_profile", "Builder.build_serialized_network",
    "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
    "INetworkDefinition.num_inputs", "INetworkDefinition.get_input",
    "INetworkDefinition.num_outputs", "INetworkDefinition.get_output",
    "ITensor.name", "ITensor.shape",
    "IOptimizationProfile.set_shape", "IBuilderConfig.add_optimization_profile",
    "IBuilderConfig.clear_flag", "BuilderFlag.TF32",
)
# Used only with TensorRT 10 (deprecated and ignored in 11).
TRT10_BUILD_ATTRIBUTES = ("NetworkDefinitionCreationFlag.STRONGLY_TYPED",)


def tensorrt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def engine_unavailable_reason() -> Optional[str]:
    """None when an engine can be built here, else why not (one short phrase)."""
    try:
        trt = tensorrt_module()
    except MissingDependencyError:
        return ("tensorrt is not installed (x86-64: pip install 'patchguard-edge[trt]'; Jetson: JetPack's "
                "python3-libnvinfer, seen from a venv made with --system-site-packages)")
    if tensorrt_major(trt) < 10:
        return f"TensorRT {trt.__version__} is too old (10 or newer needed)"
    return cuda_unavailable_reason()


def network_flags(trt: Any) -> int:
    """Creation flags: strongly typed on TensorRT 10 (always, and flag-free, on 11)."""
    if tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse(trt: Any, builder: Any, logger: Any, data: bytes, name: str) -> Any:
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PatchGuardError(f"TensorRT cannot parse {name}: {errors or 'unknown error'}")
    # The parser must outlive the network's use (it owns the weights); keep both.
    return network, parser


def build_engine(
    onnx_path: PathText,
    plan_path: PathText,
    max_batch: int = 8,
    record: Optional[ModelRecord] = None,
    tf32: bool = True,
) -> EngineInfo:
    """Build ``plan_path`` (and its ``.json`` sidecar) from an exported ONNX file.

    ``record`` defaults to the ONNX metadata. ``tf32=False`` keeps fp32
    products in full fp32 (see the module docstring). Both files appear
    atomically, or neither does.
    """
    if max_batch < 1:
        raise PatchGuardError(f"--max-batch must be at least 1, got {max_batch}")
    reason = engine_unavailable_reason()
    if reason:
        raise PatchGuardError(f"cannot build a TensorRT engine: {reason}")
    trt = tensorrt_module()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    digest = onnx_digest(onnx_path)  # of the bytes proved and built from, read before them
    model = load_onnx(onnx_path)
    record = record or get_record(model, str(onnx_path))
    proof = None
    if record.is_local:  # an engine cannot be read back: prove the graph it is built from now
        try:
            proof = verify(model, record)
        except VerificationError as exc:
            raise PatchGuardError(f"{onnx_path.name} is not proved local: {exc}; no engine built") from None
    precision = precision_of(model)
    data = fold_batchnorm(model).SerializeToString()
    del model

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, data, onnx_path.name)
    if network.num_inputs != 1 or network.num_outputs != 1:
        # The backend binds one input and one output; an engine with more is refused there too.
        raise PatchGuardError(
            f"{onnx_path.name} has {network.num_inputs} inputs and {network.num_outputs} outputs; "
            "expected one image input and one local-logit output"
        )
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 4 or shape[0] != -1:
        raise PatchGuardError(f"{onnx_path.name} input is {shape}; expected (-1, C, H, W)")
    config = builder.create_builder_config()
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (1, *shape[1:]), (1, *shape[1:]), (max_batch, *shape[1:]))
    config.add_optimization_profile(profile)
    log.info("building a %s TensorRT %s engine from %s (batch 1..%d, strongly typed%s)",
             precision, trt.__version__, onnx_path.name, max_batch,
             "" if precision != "fp32" else (", TF32 allowed" if tf32 else ", TF32 off"))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PatchGuardError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log)")
    output_name = network.get_output(0).name
    device = device_facts()
    info = EngineInfo(
        tensorrt_version=str(trt.__version__), gpu_name=device.name,
        compute_capability=device.compute_capability, sm_count=device.sm_count,
        precision=precision, max_batch=int(max_batch), input_name=tensor.name,
        output_name=output_name, source_onnx=onnx_path.name,
        tf32=bool(tf32) if precision == "fp32" else None,
        onnx_sha256=digest,
        proved_geometry=None if proof is None else proof.to_dict(),
    )
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
        write_text_atomic(sidecar_path(plan_path), sidecar_text(record, info))
    return info
