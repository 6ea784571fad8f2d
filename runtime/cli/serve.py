"""pg-serve: the runtime's Pipeline served as a Triton model through PyTriton (the [serve] extra)."""
from __future__ import annotations

from typing import Optional

import click

from ..console import Command, StopSignals, info
from ..errors import PatchGuardError

EXAMPLES = """
\b
Examples:
  pg-serve --model model.onnx
  pg-serve --model model.plan --max-batch 32 --http-port 8000 --grpc-port 8001
  pg-serve --model model.onnx --patch-size 24 --color rgb
  python examples/triton_client.py --url localhost:8000 photo.png   # a client
\b
The model is served as Triton model "patchguard" (--model-name) with dynamic
batching: the frames of every batch Triton forms are certified as one numpy
batch. Inputs: 'image' (encoded bytes) or 'frame' (raw uint8 bytes) with
'size' (height, width, channels); outputs: label, class_name, certified,
certified_patch_px, masked_box and 'result', the whole per-frame JSON of
pg-run (patchguard/runtime/serving.py); a frame that cannot be decoded or run
answers label -1 and 'result' {"error": "..."}, and the rest of its batch its
results. Needs nvidia-pytriton (pip install
'patchguard-edge[serve]'); the Python library's folder is put on
LD_LIBRARY_PATH for Triton's Python-backend stub.
"""


@click.command(cls=Command, epilog=EXAMPLES)
@click.option("--model", "--engine", "model", type=click.Path(dir_okay=False), required=True,
              help="Exported model: .onnx (onnxruntime) or .plan (TensorRT, with its .plan.json).")
@click.option("--max-batch", type=int, default=64, show_default=True,
              help="Largest batch Triton's dynamic batcher forms (frames).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--model-name", default="patchguard", show_default=True, help="Triton model name.")
@click.option("--queue-delay-us", type=int, default=2000, show_default=True,
              help="Dynamic batcher: how long a request may wait for others to join its batch.")
@click.option("--patch-size", type=int, default=None, help="Patch side in camera pixels.")
@click.option("--patch-frac", type=float, default=None, help="Patch area as a fraction of the frame (0.02 = 2%).")
@click.option("--provider", default=None, help="onnxruntime provider: cpu (default), cuda, tensorrt.")
@click.option("--color", type=click.Choice(["rgb", "bgr"], case_sensitive=False), default="bgr",
              show_default=True, help="Channel order of raw 'frame' inputs (encoded images decode to BGR).")
def main(model: str, max_batch: int, http_port: int, grpc_port: int, metrics_port: int, model_name: str,
         queue_delay_us: int, patch_size: Optional[int], patch_frac: Optional[float],
         provider: Optional[str], color: str) -> None:
    """Serve label, certificate and masked box of frames over HTTP and gRPC (Triton)."""
    from ..errors import lazy_import

    if max_batch < 1:
        raise PatchGuardError(f"--max-batch must be at least 1, got {max_batch}")
    if queue_delay_us < 0:
        raise PatchGuardError(f"--queue-delay-us must be at least 0, got {queue_delay_us}")
    for flag, port in (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
        if not 0 < port < 65536:
            raise PatchGuardError(f"{flag} must be a port number (1-65535), got {port}")
    lazy_import("pytriton.triton", "serve")  # before loading the model
    from ..heap import keep_freed_memory
    from ..pipeline import Pipeline
    from ..serving import serve

    keep_freed_memory()  # as pg-run: every batch reuses the last one's memory (glibc)

    with Pipeline.from_engine(model, patch_size=patch_size, patch_frac=patch_frac, provider=provider,
                              color=color.lower()) as pipeline:
        info(f"serving {model} as Triton model {model_name!r}: HTTP :{http_port}, gRPC :{grpc_port} "
             f"(max batch {max_batch}); Ctrl-C stops")
        with StopSignals():  # SIGTERM too stops Triton cleanly (the with-block's exit)
            serve(pipeline, max_batch=max_batch, http_port=http_port, grpc_port=grpc_port,
                  metrics_port=metrics_port, model_name=model_name, queue_delay_us=queue_delay_us)
