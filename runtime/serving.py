"""The runtime's Pipeline as a Triton model (``pg-serve``, the ``[serve]`` extra).

PyTriton runs the Triton server and hands each dynamic batch of requests to
:func:`infer_requests`, which decodes every frame of every request, runs them
through :meth:`.pipeline.Pipeline.run_batch` as one numpy batch and packs one
response per request. The wire format (one place, shared by the server, the
client helpers below, ``examples/triton_client.py`` and the benchmark):

inputs (each BYTES, shape [1] per frame; give ``image`` or ``frame`` + ``size``):
  ``image``  an encoded image (PNG, JPEG, ...), decoded with OpenCV as sent (colour in BGR order;
             gray, alpha and 16-bit kept for the Pipeline to take or refuse);
  ``frame``  a raw uint8 frame, row-major, channels last (in the server's
             ``--color`` order); ``size`` INT64 [3]: height, width, channels
             (channels 1 for gray).
outputs:
  ``label`` INT64 [1] (-1: none), ``class_name`` BYTES [1], ``certified`` BOOL [1],
  ``certified_patch_px`` INT64 [1], ``masked_box`` INT64 [4] (left, top, right,
  bottom; -1s for none), ``result`` BYTES [1]: the whole
  :meth:`.pipeline.FrameResult.to_dict` as JSON (the defense's other fields).
  A frame that cannot be decoded or run (bytes OpenCV cannot decode, ``frame``
  bytes that do not match ``size``, a frame too small for the patch, samples
  that are not uint8) answers label -1, certified false, masked_box -1s and
  ``result`` ``{"error": "<one line>"}``; the other frames of the batch, other
  clients' included, get their results (an exception would fail them all).

Nothing here imports PyTriton or tritonclient at module level: ``import
patchguard.runtime`` stays free of both.
"""
from __future__ import annotations

import json
import os
import sysconfig
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .errors import InferenceError, PatchGuardError, first_line, lazy_import
from .sources import decode_image

MODEL_NAME = "patchguard"
INPUT_NAMES = ("image", "frame", "size")
OUTPUT_NAMES = ("label", "class_name", "certified", "certified_patch_px", "masked_box", "result")
NO_BOX = (-1, -1, -1, -1)


# --------------------------------------------------------------------------
# Server side: requests to frames, results to responses.

@dataclass(frozen=True)
class Refused:
    """A frame the server cannot run, and why (one line). Its response row says so
    (``result`` is ``{"error": reason}``) while the other frames of the batch run."""

    reason: str


def decode_request(request: dict[str, np.ndarray]) -> list[Union[np.ndarray, Refused]]:
    """The frames of one request (its batch dimension first), each decoded or refused."""
    if "image" in request:
        return [_decoded(decode_image_input, item) for item in np.asarray(request["image"]).reshape(-1)]
    if "frame" not in request or "size" not in request:
        # Triton hands over only the inputs a request has: its rows are the frames to answer.
        count = max([len(np.asarray(v)) for v in request.values()] or [1])
        return [Refused("a request needs 'image' (encoded bytes) or 'frame' (raw uint8) with 'size'")] * count
    raws = np.asarray(request["frame"]).reshape(-1)
    sizes = np.asarray(request["size"])
    if sizes.size != 3 * len(raws):
        return [Refused(f"'size' must hold height, width, channels for each of the {len(raws)} frames, "
                        f"got {sizes.size} values")] * len(raws)
    return [_decoded(raw_frame, raw, size) for raw, size in zip(raws, sizes.reshape(len(raws), 3), strict=True)]


def _decoded(decode: Callable[..., np.ndarray], *args: Any) -> Union[np.ndarray, Refused]:
    try:
        return decode(*args)
    except PatchGuardError as exc:
        return Refused(first_line(exc))


def decode_image_input(data: Any) -> np.ndarray:
    """The ``image`` input's bytes -> the image as sent (gray, alpha and 16-bit
    kept; the Pipeline judges them), or one error (:func:`.sources.decode_image`)."""
    raw = np.frombuffer(_bytes(data), dtype=np.uint8)
    image = decode_image(raw, as_sent=True)
    if image is None:
        raise PatchGuardError(f"'image' is not an image OpenCV can decode ({raw.size} bytes)")
    return image


def raw_frame(data: Any, size: Any) -> np.ndarray:
    """A (h, w) or (h, w, c) uint8 frame from its bytes and (h, w, c)."""
    shape = tuple(int(v) for v in size)
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3, 4):
        raise PatchGuardError(f"'size' must be height, width, channels (1, 3 or 4), got {list(shape)}")
    raw = np.frombuffer(_bytes(data), dtype=np.uint8)
    if raw.size != shape[0] * shape[1] * shape[2]:
        raise PatchGuardError(f"'frame' holds {raw.size} bytes, 'size' {list(shape)} needs "
                              f"{shape[0] * shape[1] * shape[2]}")
    frame = raw.reshape(shape)
    return frame[:, :, 0] if shape[2] == 1 else frame


def _bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else bytes(np.asarray(data).tobytes())


def result_arrays(results: Sequence[Any]) -> dict[str, np.ndarray]:
    """One response's outputs (batch dimension first) from its FrameResults; a
    :class:`Refused` frame gets label -1, no certificate, no box and ``{"error": reason}``."""
    def row(r: Any) -> tuple[int, str, bool, int, Sequence[int], dict[str, Any]]:
        if isinstance(r, Refused):
            return -1, "", False, 0, NO_BOX, {"error": r.reason}
        box = list(r.masked_box) if r.masked_box is not None else NO_BOX
        return r.label, r.class_name, r.certified, r.certified_patch_px, box, r.to_dict()

    rows = [row(r) for r in results]
    return {
        "label": np.array([[r[0]] for r in rows], dtype=np.int64),
        "class_name": np.array([[r[1].encode()] for r in rows], dtype=np.object_),
        "certified": np.array([[r[2]] for r in rows], dtype=np.bool_),
        "certified_patch_px": np.array([[r[3]] for r in rows], dtype=np.int64),
        "masked_box": np.array([r[4] for r in rows], dtype=np.int64).reshape(len(rows), 4),
        "result": np.array([[json.dumps(r[5]).encode()] for r in rows], dtype=np.object_),
    }


def infer_requests(pipeline: Any, requests: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Triton's batch of requests: every frame decoded, certified in one
    :meth:`~.pipeline.Pipeline.run_batch`, split back per request. A frame that
    cannot be decoded or run gets its own error row; the others their results."""
    frames = [decode_request(request) for request in requests]
    good = [f for group in frames for f in group if not isinstance(f, Refused)]
    results = iter(_run(pipeline, good))
    return [result_arrays([f if isinstance(f, Refused) else next(results) for f in group]) for group in frames]


def _run(pipeline: Any, frames: list[np.ndarray]) -> list[Any]:
    """FrameResults of ``frames`` in one batch; when the batch is refused (a frame too
    small for the patch, samples that are not uint8, ...), frame by frame, so only the
    frames at fault are refused. The model failing (:class:`~.errors.InferenceError`)
    and other exceptions fail the batch: no frame of it is at fault."""
    try:
        return list(pipeline.run_batch(frames))
    except InferenceError:
        raise
    except PatchGuardError:
        pass
    out: list[Any] = []
    for frame in frames:
        try:
            out.extend(pipeline.run_batch([frame]))
        except InferenceError:
            raise
        except PatchGuardError as exc:
            out.append(Refused(first_line(exc)))
    return out


def python_libdir_env(env: Optional[dict[str, str]] = None) -> dict[str, str]:
    """``env`` (default os.environ) with the Python shared library's folder on
    LD_LIBRARY_PATH: Triton's Python-backend stub links libpython, which a
    pyenv / uv / conda Python keeps outside the loader's default paths."""
    env = dict(os.environ if env is None else env)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        if libdir not in parts:
            env["LD_LIBRARY_PATH"] = ":".join([libdir, *parts])
    return env


def serve(pipeline: Any, max_batch: int = 64, http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, model_name: str = MODEL_NAME, queue_delay_us: int = 2000) -> None:
    """Bind ``pipeline`` as the Triton model ``model_name`` and serve until SIGINT/SIGTERM."""
    # The server and its Python-backend stub inherit this process's environment.
    os.environ.update(python_libdir_env())
    pytriton = lazy_import("pytriton.triton", "serve")
    model_config = lazy_import("pytriton.model_config", "serve")
    Tensor, ModelConfig, DynamicBatcher = (model_config.Tensor, model_config.ModelConfig,
                                           model_config.DynamicBatcher)
    inputs = [Tensor(name="image", dtype=bytes, shape=(1,), optional=True),
              Tensor(name="frame", dtype=bytes, shape=(1,), optional=True),
              Tensor(name="size", dtype=np.int64, shape=(3,), optional=True)]
    outputs = [Tensor(name="label", dtype=np.int64, shape=(1,)),
               Tensor(name="class_name", dtype=bytes, shape=(1,)),
               Tensor(name="certified", dtype=np.bool_, shape=(1,)),
               Tensor(name="certified_patch_px", dtype=np.int64, shape=(1,)),
               Tensor(name="masked_box", dtype=np.int64, shape=(4,)),
               Tensor(name="result", dtype=bytes, shape=(1,))]
    config = pytriton.TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                   exit_timeout_secs=2)
    with pytriton.Triton(config=config) as triton:
        triton.bind(model_name=model_name, infer_func=lambda requests: infer_requests(pipeline, requests),
                    inputs=inputs, outputs=outputs,
                    config=ModelConfig(max_batch_size=max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
                    strict=True)
        triton.serve()


# --------------------------------------------------------------------------
# Client side (tritonclient): one frame in, the server's dict out.

def client_inputs(module: Any, frame: Optional[np.ndarray] = None, image: Optional[bytes] = None) -> list[Any]:
    """tritonclient ``InferInput`` list for one frame (raw ``frame`` or encoded
    ``image``); ``module`` is ``tritonclient.http`` or ``tritonclient.grpc``."""
    if (frame is None) == (image is None):
        raise PatchGuardError("give a raw frame or an encoded image")
    if image is not None:
        item = module.InferInput("image", [1, 1], "BYTES")
        item.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        return [item]
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    shape = frame.shape if frame.ndim == 3 else (*frame.shape, 1)
    raw = module.InferInput("frame", [1, 1], "BYTES")
    raw.set_data_from_numpy(np.array([[frame.tobytes()]], dtype=np.object_))
    size = module.InferInput("size", [1, 3], "INT64")
    size.set_data_from_numpy(np.array([shape], dtype=np.int64))
    return [raw, size]


def client_outputs(module: Any) -> list[Any]:
    return [module.InferRequestedOutput(name) for name in OUTPUT_NAMES]


def response_dict(response: Any) -> dict[str, Any]:
    """The server's ``result`` (FrameResult.to_dict()) of a one-frame response,
    checked against the typed outputs it was sent with; a refused frame's
    reason is raised as a one-line error."""
    result = json.loads(response.as_numpy("result").reshape(-1)[0])
    if "error" in result:
        raise PatchGuardError(f"the server refused the frame: {result['error']}")
    box = [int(v) for v in response.as_numpy("masked_box").reshape(-1)]
    typed = {"label": int(response.as_numpy("label").reshape(-1)[0]),
             "class_name": response.as_numpy("class_name").reshape(-1)[0].decode(),
             "certified": bool(response.as_numpy("certified").reshape(-1)[0]),
             "certified_patch_px": int(response.as_numpy("certified_patch_px").reshape(-1)[0]),
             "masked_box": None if tuple(box) == NO_BOX else box}
    for key, value in typed.items():
        if result[key] != value:
            raise PatchGuardError(f"response output {key!r} is {value!r} but its result says {result[key]!r}")
    return dict(result)
