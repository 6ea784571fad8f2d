"""Dataset-scale certification on Ray Data (``pg-certify --ray``, the ``[ray]`` extra).

The pipeline is Ray Data's, end to end:

1. **Read**: ``ray.data.read_datasource`` over a :class:`~.datasets.LabelledSet`
   (Fashion-MNIST's idx files, an image folder, a NumPy or Parquet table).
   Each read task opens the files on its node and reads whole chunks of
   ``chunk`` rows (the single-process path's inference batches), one block
   per chunk, with the code the single-process loader uses
   (``LabelledSet.read``). Ray's own ``read_images`` decodes with PIL, whose
   JPEG decoder need not give OpenCV's pixels; same pixels are the point.
2. **Certify** in ``map_batches`` on a pool of actors, one model each
   (``workers``; ``batch`` rows per call): inference one chunk per backend
   call, then certification in numpy, every image on its own
   (:func:`~.evaluate.per_image`, or :func:`~.view_evaluate.view_counts`
   for view defenses), so only per-image flags travel back.
3. **Report** on the driver: the flags in the single-process order, summed by
   the one report function, so the report is the single-process report.

Why identical: each image's certificate depends on its own logits only, and
its logits come from the same backend call as without Ray whenever ``batch``
is a multiple of ``chunk`` (the default) and no image of a folder is
unreadable; otherwise the chunks are cut differently, which changes nothing
for a backend whose per-image output does not depend on the batch
(onnxruntime's CPU provider, checked in the tests). View defenses run their
images in the same steps of :data:`~.view_evaluate.FRAMES_PER_STEP` as long as
``batch`` is a multiple of it (the report's ``ms_per_image`` is time, summed
over the workers, and differs from run to run as it does without Ray).

Fault tolerance is Ray's: the actor pool restarts a dead actor and retries
its batch (``max_restarts`` / ``max_task_retries``, -1 = no limit), so a
worker killed mid-run costs time, not results.

Without an address, a local Ray cluster; with one (``ray://host:10001`` or
``auto``), the user's. On a cluster the model file and the data must be at
the same path on every node (shared storage), and each node needs this
package with the ``[ray]`` and ``[cpu]`` (or ``[gpu]``) extras.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
from typing import Any, Iterator, Optional

import numpy as np

from .errors import PatchGuardError, first_line, lazy_import


def _read_chunks(labelled: Any, chunk: int, first: int, last: int) -> Iterator[Any]:
    """Blocks of chunks [first, last): rows ``chunk`` (id), ``row`` (place in it), image, label."""
    from ray.data.block import BlockAccessor

    for c in range(first, last):
        images, labels = labelled.read(c * chunk, (c + 1) * chunk)
        yield BlockAccessor.batch_to_block({
            "chunk": np.full(len(labels), c, dtype=np.int64),
            "row": np.arange(len(labels), dtype=np.int64),
            "image": np.ascontiguousarray(images), "label": labels})


def _datasource(labelled: Any, chunk: int) -> Any:
    ray_data = lazy_import("ray.data", "ray")
    from ray.data.block import BlockMetadata

    base: Any = ray_data.Datasource

    class LabelledDatasource(base):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                           data_context: Any = None) -> list[Any]:
            count = -(-labelled.length // chunk)
            tasks = min(max(1, parallelism), count)
            bounds = np.linspace(0, count, tasks + 1).round().astype(int)
            return [ray_data.ReadTask(
                functools.partial(_read_chunks, labelled, chunk, int(a), int(b)),
                BlockMetadata(num_rows=min(int(b) * chunk, labelled.length) - int(a) * chunk,
                              size_bytes=None, exec_stats=None, input_files=None))
                for a, b in itertools.pairwise(bounds) if b > a]

    return LabelledDatasource()


class Certifier:
    """A Ray actor's state: one opened model. Turns a batch of rows (chunk, row,
    image, label) into per-image flags (BagNets) or counts (view defenses)."""

    def __init__(self, model: str, provider: Optional[str], threads: Optional[int],
                 allow_unverified: bool, sizes: list[Any], options: Any,
                 keep_logits: bool) -> None:
        from .backends import open_backend

        self.backend = open_backend(model, provider=provider, threads=threads,
                                    allow_unverified=allow_unverified)
        self.sizes, self.options, self.keep_logits = sizes, options, keep_logits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        order = np.lexsort((batch["row"], batch["chunk"]))
        chunks, rows = batch["chunk"][order], batch["row"][order]
        images, labels = np.asarray(batch["image"])[order], np.asarray(batch["label"])[order]
        out: dict[str, np.ndarray] = {"chunk": chunks, "row": rows,
                                      "pid": np.full(len(rows), os.getpid(), dtype=np.int64)}
        if not self.backend.record.is_local:
            from .view_evaluate import view_counts

            counts, seconds, _ = view_counts(self.backend, images, labels, self.sizes)
            out.update(counts)
            for k, spent in enumerate(seconds):  # the batch's time, on its first row
                out[f"{k}/seconds"] = np.zeros(len(rows))
                out[f"{k}/seconds"][:1] = spent
            return out
        from .evaluate import per_image
        from .preprocess import normalize

        # One backend call per chunk, the single-process path's calls: the items of the one
        # batched path are the chunks of this batch (rows sorted by chunk), one per call.
        record = self.backend.record
        parts = [images[chunks == c] for c in np.unique(chunks)]
        u = self.backend.infer_all(parts, 1, prepare=lambda part: normalize(part[0], record))
        out.update(per_image(u, labels, self.sizes, self.options))
        if self.keep_logits:
            out["logits"] = u
        out["label"] = labels
        return out


def _retry_forever(ray: Any) -> dict[str, int]:
    """Actor restarts and batch retries without limit. Ray Data's actor pools do
    that by default in the Ray this was tested with (2.60), which also deprecates
    passing them (removal in 2.64); older Rays get them as keywords."""
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    return {} if version >= (2, 60) else {"max_restarts": -1, "max_task_retries": -1}


def start_ray(ray: Any, address: Optional[str], num_cpus: int) -> None:
    """``ray.init``: the cluster at ``address``, or a local instance of ``num_cpus``
    CPUs. A local start is tried twice: Ray gives a new node 30 s (fixed) to register,
    which a busy machine can miss."""
    for attempt in (1, 2):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": num_cpus}))
            return
        except Exception as exc:  # Ray raises bare Exception too (a node that timed out starting)
            ray.shutdown()
            if address is None and attempt == 1:
                continue
            raise PatchGuardError(f"cannot reach the Ray cluster {address or '(local)'}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def _one_line_logs(name: str) -> Iterator[None]:
    """Ray Data logs a failed task's traceback on the console before the driver
    sees the error; while ``name``'s console handlers carry this filter they print
    the log line alone (the error itself becomes one ``Error:`` line; Ray's log
    file keeps the traceback)."""
    screen = _NoTraceback()
    handlers = [h for h in logging.getLogger(name).handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    for handler in handlers:
        handler.addFilter(screen)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(screen)


def task_error(exc: BaseException) -> str:
    """The one line a failed Ray task's error stands for. Ray Data hands the driver
    its own exception whose text holds the task's traceback (the task's exception
    object does not travel): our own error's line when it is there (a bad label,
    an unreadable cell), else the first line of Ray's."""
    ours = [line.split(": ", 1)[1] for line in str(exc).splitlines()
            if line.startswith("patchguard.runtime.errors.") and ": " in line]
    return ours[-1] if ours else f"the Ray run failed: {first_line(exc)}"


def _reap(pids: set[int], grace: float = 5.0) -> None:
    """End the actors of the local Ray instance we started that outlive its shutdown.

    After a long run an actor process was seen orphaned (parent 1) minutes after
    ``ray.shutdown()``; only processes that reported themselves as our actors and
    still carry the actor's title are signalled."""
    import signal
    import time

    def ours(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                return b"MapBatches(Certifier)" in handle.read()
        except OSError:
            return False

    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if ours(pid)}
        time.sleep(0.2)
    for pid in pids:
        if ours(pid):
            with contextlib.suppress(OSError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)


def certify_with_ray(labelled: Any, model: str, sizes: list[Any], options: Any, *,
                     workers: int = 2, chunk: int = 256, batch: Optional[int] = None,
                     address: Optional[str] = None, provider: Optional[str] = None,
                     threads: Optional[int] = None, allow_unverified: bool = False,
                     keep_logits: bool = False) -> dict[str, np.ndarray]:
    """Per-image results of ``labelled`` (a :class:`~.datasets.LabelledSet`) in the
    single-process order, as columns: BagNets: :func:`~.evaluate.per_image`'s flags
    (``options`` an :class:`~.evaluate.EvaluationOptions`), ``label``, and ``logits`` (N, H, W, C) when
    ``keep_logits``; view defenses: :func:`~.view_evaluate.view_counts`'s counts and
    ``{k}/seconds``. ``workers`` actors of ``threads`` CPUs (default 1) each, ``batch``
    rows per call (default ``chunk``)."""
    batch = chunk if batch is None else batch
    for flag, value in (("--ray-workers", workers), ("--ray-batch", batch)):
        if value < 1:
            raise PatchGuardError(f"{flag} must be at least 1, got {value}")
    if labelled.length == 0:
        raise PatchGuardError("no images to certify")
    ray = lazy_import("ray", "ray")
    ray_data = lazy_import("ray.data", "ray")
    # Each actor holds ``per_actor`` CPUs and gives onnxruntime that many threads: its
    # default (every core, per actor) oversubscribes the node.
    per_actor = threads or 1
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(ray, address, workers * per_actor + 1)  # + 1: the read tasks
    pids: set[int] = set()
    try:
        count = -(-labelled.length // chunk)
        dataset = ray_data.read_datasource(_datasource(labelled, chunk),
                                           override_num_blocks=max(1, min(count, 4 * workers)))
        out = dataset.map_batches(
            Certifier, batch_size=batch, compute=ray_data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"model": str(model), "provider": provider, "threads": per_actor,
                                   "allow_unverified": allow_unverified, "sizes": list(sizes),
                                   "options": options, "keep_logits": keep_logits},
            num_cpus=per_actor, **_retry_forever(ray))
        try:
            with _one_line_logs("ray.data"):
                parts = [part for part in out.iter_batches(batch_size=None, batch_format="numpy")]
        except ray.exceptions.RayError as exc:
            raise PatchGuardError(task_error(exc)) from None
        pids.update(int(pid) for part in parts for pid in np.unique(part["pid"]))
    finally:
        if started_here:
            ray.shutdown()
            if address is None:  # a local instance of ours; never a user's cluster
                _reap(pids)
    if not parts:
        raise PatchGuardError(f"no readable images in {labelled.description}")
    columns = {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    columns.pop("pid")
    order = np.lexsort((columns["row"], columns["chunk"]))
    chunks, rows = columns.pop("chunk")[order], columns.pop("row")[order]
    # Every row exactly once, in order (a folder's read may skip unreadable images).
    first = np.r_[True, chunks[1:] != chunks[:-1]]
    expected = np.arange(len(rows)) - np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    if not np.array_equal(rows, expected) or (len(rows) != labelled.length and not labelled.may_skip):
        raise PatchGuardError(f"Ray returned {len(rows)} rows for {labelled.length} images")
    return {name: values[order] for name, values in columns.items()}
