"""ONNX -> TensorRT engine (``NAME.plan`` + ``NAME.plan.json``), torch-free.

Engines run only on the TensorRT version and GPU family that built them, so
this step runs on the target itself (``pg-export --onnx model.onnx`` on the
Jetson). The precision comes from the ONNX graph, never from a flag:

- fp32 graph -> fp32 engine (weakly typed network, no precision flags);
- fp16 graph (``NAME.fp16.onnx``) -> fp16 engine from a strongly typed network;
- QDQ graph (``NAME.int8.onnx``) -> int8 engine from a strongly typed network.

TensorRT 11 removed ``BuilderFlag.FP16``/``INT8`` and the calibrators and
always builds strongly typed networks (its ``STRONGLY_TYPED`` creation flag is
deprecated and ignored, so it is not passed). TensorRT 10 (JetPack 6 ships
10.3) still has the flags but already supports strongly typed networks; it gets
``1 << STRONGLY_TYPED`` for fp16/int8 graphs, so both versions build the same
engine from the same file. One optimisation profile covers batch 1..max_batch
(optimised for batch 1, the per-frame camera case).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..runtime.backends.tensorrt import (
    EngineInfo, cuda_runtime, device_facts, gpu_count, sidecar_path, sidecar_text, tensorrt_module,
)
from ..runtime.errors import MissingDependencyError, PatchGuardError
from ..runtime.files import atomic_path, write_text_atomic
from ..runtime.metadata import ModelRecord
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
        return "tensorrt is not installed (pip install 'patchguard-edge[trt]'; JetPack ships it)"
    if tensorrt_major(trt) < 10:
        return f"TensorRT {trt.__version__} is too old (10 or newer needed)"
    try:
        cuda_runtime()
    except MissingDependencyError:
        return "cuda-python is not installed (pip install 'patchguard-edge[trt]')"
    if gpu_count() == 0:
        return "no CUDA GPU is visible"
    return None


def network_flags(trt: Any, precision: str) -> int:
    """Creation flags: strongly typed for fp16/int8 graphs (implicit in TensorRT 11)."""
    if precision == "fp32" or tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse(trt: Any, builder: Any, logger: Any, data: bytes, precision: str, name: str) -> Any:
    network = builder.create_network(network_flags(trt, precision))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PatchGuardError(f"TensorRT cannot parse {name}: {errors or 'unknown error'}")
    # The parser must outlive the network's use (it owns the weights); keep both.
    return network, parser


def build_engine(
    onnx_path: os.PathLike,
    plan_path: os.PathLike,
    max_batch: int = 8,
    record: Optional[ModelRecord] = None,
) -> EngineInfo:
    """Build ``plan_path`` (and its ``.json`` sidecar) from an exported ONNX file.

    ``record`` defaults to the ONNX metadata. Both files appear atomically, or
    neither does.
    """
    if max_batch < 1:
        raise PatchGuardError(f"--max-batch must be at least 1, got {max_batch}")
    reason = engine_unavailable_reason()
    if reason:
        raise PatchGuardError(f"cannot build a TensorRT engine: {reason}")
    trt = tensorrt_module()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    model = load_onnx(onnx_path)
    record = record or get_record(model, str(onnx_path))
    precision = precision_of(model)
    data = model.SerializeToString()
    del model

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, data, precision, onnx_path.name)
    if network.num_inputs != 1:
        raise PatchGuardError(f"{onnx_path.name} has {network.num_inputs} inputs; expected one")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 4 or shape[0] != -1:
        raise PatchGuardError(f"{onnx_path.name} input is {shape}; expected (-1, C, H, W)")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (1, *shape[1:]), (1, *shape[1:]), (max_batch, *shape[1:]))
    config.add_optimization_profile(profile)
    log.info("building a %s TensorRT %s engine from %s (batch 1..%d)",
             precision, trt.__version__, onnx_path.name, max_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PatchGuardError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log)")
    output_name = network.get_output(0).name if network.num_outputs else ""
    gpu, capability = device_facts()
    info = EngineInfo(
        tensorrt_version=str(trt.__version__), gpu_name=gpu, compute_capability=capability,
        precision=precision, max_batch=int(max_batch), input_name=tensor.name,
        output_name=output_name, source_onnx=onnx_path.name,
    )
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
        write_text_atomic(sidecar_path(plan_path), sidecar_text(record, info))
    return info
