"""pg-serve under load: requests per second and latency over HTTP and gRPC, beside in-process.

    python benchmarks/serve.py --model model.onnx [--frames 500] [--threads 8] [--json out.json]
    python benchmarks/serve.py --short            # CI: the bundled model exported, 40 frames

Starts ``pg-serve`` on free localhost ports, sends ``--frames`` Fashion-MNIST
test frames (56x56 BGR) from ``--threads`` client threads over HTTP (as PNG
bytes) and the same frames over gRPC (raw uint8 + size), and prints requests
per second and p50/p99 latency of each, then the same frames through the
in-process :class:`Pipeline` (one call per frame, from the same number of
threads). ``--json`` writes every response's result (index -> dict) so a test
can compare them with :class:`Pipeline`'s own (tests/runtime/test_serve.py).
Figures are printed, never asserted. Needs the [serve] extra (see README).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

PG_SERVE = [sys.executable, "-c", "from patchguard.runtime.cli.serve import main; main()"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def frames(count: int) -> list[np.ndarray]:
    import cv2

    from patchguard.runtime.datasets import load_fashion_mnist

    images, _ = load_fashion_mnist("test")
    return [cv2.cvtColor(cv2.resize(image, (56, 56)), cv2.COLOR_GRAY2BGR) for image in images[:count]]


class Server:
    """``pg-serve`` in a subprocess on free ports; stopped (SIGTERM) on exit."""

    def __init__(self, model: str, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.http_port, self.grpc_port, metrics = free_ports(3)
        command = [*PG_SERVE, "--model", model,
                   "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   "--metrics-port", str(metrics), *extra]
        self.log = log
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> float:
        import tritonclient.http as http

        began = time.perf_counter()
        client = http.InferenceServerClient(f"localhost:{self.http_port}")
        while time.perf_counter() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"pg-serve exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if client.is_model_ready("patchguard"):
                    return time.perf_counter() - began
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"pg-serve not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load(call: Callable[[int], Any], count: int, threads: int) -> tuple[list[Any], list[float], float]:
    """``call(i)`` for every i from ``threads`` threads: results, per-call seconds, wall seconds."""
    results: list[Any] = [None] * count
    seconds = [0.0] * count

    def one(i: int) -> None:
        began = time.perf_counter()
        results[i] = call(i)
        seconds[i] = time.perf_counter() - began

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return results, seconds, time.perf_counter() - began


def figures(name: str, seconds: list[float], wall: float) -> str:
    ms = np.asarray(seconds) * 1e3
    return (f"{name:<12} {len(seconds) / wall:8.1f} req/s   p50 {np.percentile(ms, 50):7.2f} ms   "
            f"p99 {np.percentile(ms, 99):7.2f} ms   ({len(seconds)} frames)")


def clients(module: Any, url: str, threads: int) -> Callable[[], Any]:
    """One client per thread (tritonclient's clients are not shared between threads)."""
    local = threading.local()

    def get() -> Any:
        if not hasattr(local, "client"):
            local.client = module.InferenceServerClient(url)
        return local.client
    return get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Exported model (.onnx/.plan); --short exports the bundled one.")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", default=None, help="Write every response's result here.")
    parser.add_argument("--short", action="store_true", help="CI mode: 40 frames.")
    args = parser.parse_args()
    import cv2
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    from patchguard.runtime.pipeline import Pipeline
    from patchguard.runtime.serving import client_inputs, client_outputs, response_dict

    work = Path(tempfile.mkdtemp(prefix="pg-serve-bench-"))
    model = args.model or os.environ.get("PATCHGUARD_TEST_ONNX")
    if model is None:
        sys.exit("give --model (or set PATCHGUARD_TEST_ONNX)")
    count = 40 if args.short else args.frames
    shots = frames(count)
    pngs = [cv2.imencode(".png", f)[1].tobytes() for f in shots]
    with Server(model, work / "pg-serve.log") as server:
        ready = server.wait_ready()
        print(f"pg-serve ready in {ready:.1f} s (HTTP :{server.http_port}, gRPC :{server.grpc_port})")
        over_http = clients(http, f"localhost:{server.http_port}", args.threads)
        over_grpc = clients(grpc, f"localhost:{server.grpc_port}", args.threads)
        outputs_http, outputs_grpc = client_outputs(http), client_outputs(grpc)
        # Warm-up: the first requests pay for the session's first runs.
        for i in range(min(8, count)):
            over_http().infer("patchguard", client_inputs(http, image=pngs[i]), outputs=outputs_http)
        got_http, sec_http, wall_http = load(
            lambda i: response_dict(over_http().infer("patchguard", client_inputs(http, image=pngs[i]),
                                                      outputs=outputs_http)), count, args.threads)
        got_grpc, sec_grpc, wall_grpc = load(
            lambda i: response_dict(over_grpc().infer("patchguard", client_inputs(grpc, frame=shots[i]),
                                                      outputs=outputs_grpc)), count, args.threads)
    with Pipeline.from_engine(model) as pipeline:
        for frame in shots[:8]:
            pipeline(frame)
        local, sec_local, wall_local = load(lambda i: pipeline(shots[i]).to_dict(), count, args.threads)
    print(f"{count} frames 56x56, {args.threads} client threads, CPU onnxruntime, {os.cpu_count()} cores")
    print(figures("HTTP (PNG)", sec_http, wall_http))
    print(figures("gRPC (raw)", sec_grpc, wall_grpc))
    print(figures("in-process", sec_local, wall_local))
    same = sum(_same(a, b) and _same(c, b) for a, c, b in zip(got_http, got_grpc, local))
    print(f"responses equal to Pipeline's (without latency_ms): {same}/{count}")
    if args.json:
        Path(args.json).write_text(json.dumps({"http": got_http, "grpc": got_grpc}) + "\n")


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "latency_ms"} == {k: v for k, v in b.items() if k != "latency_ms"}


if __name__ == "__main__":
    main()
