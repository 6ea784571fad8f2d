"""A Triton model repository for a full ``tritonserver`` (``pg-export --triton-repo DIR``).

Three models:

- ``patchguard_backbone``: the exported ONNX file (``onnxruntime`` backend) or
  TensorRT engine (``tensorrt_plan``): normalised input (B, C, H, W) -> local
  logits (B, H', W', C');
- ``patchguard_certify``: robust masking and its certificate on those logits
  (Python backend, :func:`patchguard.runtime.certificate.certify_batch` with
  the threat model :class:`~patchguard.runtime.pipeline.Pipeline` uses for a
  frame at model size), so its label, certified flag and certified patch size
  equal Pipeline's on such a frame;
- ``patchguard``: the ensemble tying them.

The client preprocesses (resize to the model size, normalise: the record's
mean and std, in ``patchguard_certify/1/threat.json``). The Python backend's
environment needs this package (``pip install patchguard-edge``) and numpy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from patchguard.runtime.errors import PatchGuardError

BACKBONE, CERTIFY, ENSEMBLE = "patchguard_backbone", "patchguard_certify", "patchguard"

_MODEL_PY = '''"""Triton Python backend: PatchGuard robust masking and its certificate (written by pg-export)."""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from patchguard.runtime.certificate import certify_batch
from patchguard.runtime.masking import check_logits


class TritonPythonModel:
    def initialize(self, args):
        threat = json.loads(Path(__file__).with_name("threat.json").read_text())
        self.window = tuple(threat["window"])
        self.patch_windows = [tuple(w) for w in threat["patch_windows"]]
        self.sizes = np.asarray([0, *threat["sizes"]], dtype=np.int64)

    def execute(self, requests):
        responses = []
        for request in requests:
            u = pb_utils.get_input_tensor_by_name(request, "local_logits").as_numpy()
            found = certify_batch(check_logits(np.asarray(u, dtype=np.float32)), self.window,
                                  self.patch_windows, 0.0, None)
            certified = found.index == len(self.patch_windows) - 1
            outputs = [
                pb_utils.Tensor("label", found.labels.astype(np.int64).reshape(-1, 1)),
                pb_utils.Tensor("certified", certified.reshape(-1, 1)),
                pb_utils.Tensor("certified_patch_px", self.sizes[found.index + 1].reshape(-1, 1)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''


def _dims(values: Any) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _tensor(kind: str, name: str, dtype: str, dims: Any) -> str:
    return f'{kind} [\n  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: {_dims(dims)}\n  }}\n]\n'


def write_triton_repo(model: Path, out: Path, max_batch: int = 64, patch_px: Optional[int] = None) -> Path:
    """Write the repository for ``model`` (.onnx or .plan) under ``out``; return ``out``."""
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.footprint import camera_threat, patch_side
    from patchguard.runtime.preprocess import resize_plan

    if max_batch < 1:
        raise PatchGuardError(f"--max-batch must be at least 1, got {max_batch}")
    model = Path(model)
    with open_backend(model) as backend:
        record = backend.record
        if not record.is_local:
            raise PatchGuardError("--triton-repo writes BagNet repositories; view defenses are not supported yet")
        input_name = getattr(backend, "_input", "input")  # the graph's own tensor names
        output_name = getattr(backend, "_output", "local_logits")
        plan = resize_plan(record.input_size, record)
        threat = camera_threat(plan, record, patch_side(plan, record, patch_px, None))
    map_h, map_w = record.map_size
    chw = (record.in_channels, *record.input_size)
    hwc = (map_h, map_w, record.num_classes)
    if out.exists() and any(out.iterdir()):
        raise PatchGuardError(f"{out} exists and is not empty; give a new folder")
    plan_file = model.suffix == ".plan"
    for name in (BACKBONE, CERTIFY, ENSEMBLE):
        (out / name / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / BACKBONE / "1" / ("model.plan" if plan_file else "model.onnx"))
    backend_line = 'platform: "tensorrt_plan"' if plan_file else 'backend: "onnxruntime"'
    (out / BACKBONE / "config.pbtxt").write_text(
        f'name: "{BACKBONE}"\n{backend_line}\nmax_batch_size: {max_batch}\n'
        + _tensor("input", input_name, "TYPE_FP32", chw) + _tensor("output", output_name, "TYPE_FP32", hwc)
        + "dynamic_batching { }\n")
    (out / CERTIFY / "config.pbtxt").write_text(
        f'name: "{CERTIFY}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        + _tensor("input", "local_logits", "TYPE_FP32", hwc)
        + "output [\n" + ",\n".join(
            f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: [ 1 ]\n  }}'
            for n, t in (("label", "TYPE_INT64"), ("certified", "TYPE_BOOL"), ("certified_patch_px", "TYPE_INT64")))
        + "\n]\ndynamic_batching { }\n")
    (out / CERTIFY / "1" / "model.py").write_text(_MODEL_PY)
    (out / CERTIFY / "1" / "threat.json").write_text(json.dumps({
        "patch_px": threat.patch_px, "window": list(threat.window), "sizes": list(threat.sizes),
        "patch_windows": [list(w) for w in threat.patch_windows],
        "input_size": list(record.input_size), "mean": list(record.mean), "std": list(record.std),
        "class_names": list(record.class_names)}, indent=1) + "\n")
    outputs = (("label", "TYPE_INT64"), ("certified", "TYPE_BOOL"), ("certified_patch_px", "TYPE_INT64"))
    (out / ENSEMBLE / "config.pbtxt").write_text(
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        + _tensor("input", "input", "TYPE_FP32", chw)
        + "output [\n" + ",\n".join(f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: [ 1 ]\n  }}'
                                    for n, t in outputs) + "\n]\n"
        + "ensemble_scheduling {\n"
        + f'  step [\n    {{\n      model_name: "{BACKBONE}"\n      model_version: -1\n'
        + f'      input_map {{ key: "{input_name}" value: "input" }}\n'
        + f'      output_map {{ key: "{output_name}" value: "local_logits" }}\n    }},\n'
        + f'    {{\n      model_name: "{CERTIFY}"\n      model_version: -1\n'
        + '      input_map { key: "local_logits" value: "local_logits" }\n'
        + "".join(f'      output_map {{ key: "{n}" value: "{n}" }}\n' for n, _ in outputs)
        + "    }\n  ]\n}\n")
    return out
