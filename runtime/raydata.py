"""Dataset-scale inference on Ray Data (``pg-certify --ray``, the ``[ray]`` extra).

The backbone passes are the hours of a large evaluation; they are spread over
a pool of Ray actors, one model each (``workers``). The data set is cut into
the SAME chunks of ``chunk`` images that the single-process path
(``pg-certify`` without ``--ray``) sends to the backend, so every image's
local logits come from an identical backend call; the driver puts the chunks
back in order and hands them to the one :func:`~.evaluate.evaluate`, so the
report is the single-process report, byte for byte. (Certifying is cheap
numpy next to inference, and doing it once on the driver keeps one code path
for the report.)

Fault tolerance is Ray's: the actor pool restarts a dead actor and retries
its batch (``max_restarts`` / ``max_task_retries``, -1 = no limit), so a
worker killed mid-run costs time, not results.

Without an address, a local Ray cluster; with one (``ray://host:10001`` or
``auto``), the user's. On a cluster the model file must be at the same path on
every node (shared storage), and each node needs this package with the
``[ray]`` and ``[cpu]`` (or ``[gpu]``) extras.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .errors import PatchGuardError, lazy_import


class ChunkInference:
    """A Ray actor's state: one opened model; turns chunk ids into local logits."""

    def __init__(self, model: str, images: Any, chunk: int, provider: Optional[str],
                 threads: Optional[int], allow_unverified: bool) -> None:
        from .backends import open_backend

        self.backend = open_backend(model, provider=provider, threads=threads,
                                    allow_unverified=allow_unverified)
        import ray

        # The object store's read-only array, shared by the node's actors (a reference
        # in constructor keywords is passed as is, not resolved).
        self.images = ray.get(images) if isinstance(images, ray.ObjectRef) else images
        self.chunk = chunk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from .preprocess import normalize

        ids, parts = [], []
        for chunk_id in np.asarray(batch["id"]).tolist():
            start = int(chunk_id) * self.chunk
            x = normalize(self.images[start : start + self.chunk], self.backend.record)
            parts.append(np.asarray(self.backend.infer(x), dtype=np.float32))
            ids.append(int(chunk_id))
        # One row per chunk; the last chunk may be shorter, so the logits travel as bytes.
        return {"id": np.asarray(ids, dtype=np.int64),
                "shape": np.asarray([p.shape for p in parts], dtype=np.int64),
                "logits": np.array([p.tobytes() for p in parts], dtype=object)}


def infer_with_ray(model: str, images: np.ndarray, *, workers: int = 2,
                   chunk: int = 256, address: Optional[str] = None, provider: Optional[str] = None,
                   threads: Optional[int] = None, allow_unverified: bool = False) -> np.ndarray:
    """Local logits (N, H, W, C) of ``images`` (N, h, w[, c]) uint8 at model size,
    computed by ``workers`` Ray actors in chunks of ``chunk`` images, in order."""
    if workers < 1:
        raise PatchGuardError(f"--ray-workers must be at least 1, got {workers}")
    if chunk < 1:
        raise PatchGuardError(f"--ray-batch must be at least 1, got {chunk}")
    ray = lazy_import("ray", "ray")
    lazy_import("ray.data", "ray")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": workers + 1}))  # + 1: Ray Data's read task
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PatchGuardError(f"cannot reach the Ray cluster {address or '(local)'}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        count = (len(images) + chunk - 1) // chunk
        images_ref = ray.put(np.ascontiguousarray(images))
        dataset = ray.data.range(count, override_num_blocks=max(1, min(count, 4 * workers)))
        out = dataset.map_batches(
            ChunkInference, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"model": str(model), "images": images_ref, "chunk": chunk,
                                   "provider": provider, "threads": threads,
                                   "allow_unverified": allow_unverified},
            num_cpus=1, max_restarts=-1, max_task_retries=-1)
        rows = out.take_all()
    finally:
        if started_here:
            ray.shutdown()
    parts: dict[int, np.ndarray] = {}
    for row in rows:
        shape = tuple(int(v) for v in row["shape"])
        parts[int(row["id"])] = np.frombuffer(row["logits"], dtype=np.float32).reshape(shape)
    if sorted(parts) != list(range(count)):
        raise PatchGuardError(f"Ray returned {len(parts)} of {count} chunks")
    if count == 0:
        raise PatchGuardError("no images to certify")
    return np.concatenate([parts[i] for i in range(count)])
