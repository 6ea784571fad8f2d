"""pg-serve: the Pipeline served through Triton (PyTriton) answers exactly as the Pipeline does.

The server tests need the [serve] extra (nvidia-pytriton pins numpy < 2, so
they run in a venv of their own: README, "Serving with Triton"); without it
they skip. The request/response codec runs everywhere.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.serving import (
    Refused,
    decode_request,
    infer_requests,
    python_libdir_env,
    raw_frame,
    response_dict,
    result_arrays,
)

# The entry point without its console script (a venv installed before pg-serve existed has none).
PG_SERVE = [sys.executable, "-c", "from patchguard.runtime.cli.serve import main; main()"]
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _serve_available() -> bool:
    try:
        import pytriton.triton  # noqa: F401
        import tritonclient.grpc
        import tritonclient.http  # noqa: F401
    except ImportError:
        return False
    return True


needs_serve = pytest.mark.skipif(not _serve_available(),
                                 reason="needs the [serve] extra (nvidia-pytriton, tritonclient): README, "
                                        "'Serving with Triton'")


def test_raw_frames_decode_in_their_shape() -> None:
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    got = decode_request({"frame": np.array([[frame.tobytes()]], dtype=object),
                          "size": np.array([[2, 3, 3]], dtype=np.int64)})
    assert len(got) == 1 and np.array_equal(got[0], frame)
    gray = raw_frame(frame[:, :, 0].tobytes(), (2, 3, 1))
    assert np.array_equal(gray, frame[:, :, 0])


def test_encoded_images_decode_to_bgr() -> None:
    cv2 = pytest.importorskip("cv2")
    frame = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    png = cv2.imencode(".png", frame)[1].tobytes()
    got = decode_request({"image": np.array([[png]], dtype=object)})
    assert np.array_equal(got[0], frame)


@pytest.mark.parametrize("request_, message", [
    ({"size": np.array([[1, 1, 1]])}, "needs 'image'"),
    ({"frame": np.array([[b"abc"]], dtype=object), "size": np.array([[2, 2, 1]])}, "holds 3 bytes"),
    ({"frame": np.array([[b"abcd"]], dtype=object), "size": np.array([[2, 2, 2]])}, "channels"),
    ({"frame": np.array([[b"abcd"]], dtype=object), "size": np.array([[2, 2]])}, "for each of the 1 frames"),
    ({"image": np.array([[b"not an image"]], dtype=object)}, "not an image"),
])
def test_bad_requests_are_refused_with_a_reason(request_: dict, message: str) -> None:
    pytest.importorskip("cv2")
    (got,) = decode_request(request_)
    assert isinstance(got, Refused) and message in got.reason and "\n" not in got.reason



class _Response:
    """tritonclient's InferResult face (``as_numpy``) over one response's outputs."""

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray:
        return self.outputs[name]


def test_the_client_helper_raises_a_refused_frame_in_one_line() -> None:
    with pytest.raises(PatchGuardError, match="server refused the frame: 'frame' holds 3 bytes") as info:
        response_dict(_Response(result_arrays([Refused("'frame' holds 3 bytes, 'size' [2, 2, 1] needs 4")])))
    assert "\n" not in str(info.value)

@pytest.mark.fashion_mnist
def test_a_bad_frame_gets_its_own_error_row_and_the_batch_its_results(default_onnx: Path) -> None:
    """What PyTriton's bound function receives, one dynamic batch of several clients'
    requests (numpy, batch dimension first), through the real Pipeline: each bad frame
    (undecodable, bytes that do not match 'size', 16-bit samples, too small for the
    patch) answers label -1 and a one-line error; every good frame, in the same request
    or another, answers exactly what Pipeline says for it alone."""
    cv2 = pytest.importorskip("cv2")
    from _pipeline_fixtures import fashion_frames

    from patchguard.runtime.pipeline import Pipeline

    shots = fashion_frames(4, (56, 56))[0]

    def raw(*frames: np.ndarray) -> dict[str, np.ndarray]:
        return {"frame": np.array([[f.tobytes()] for f in frames], dtype=object),
                "size": np.array([f.shape if f.ndim == 3 else (*f.shape, 1) for f in frames], dtype=np.int64)}

    def png(image: np.ndarray) -> bytes:
        return cv2.imencode(".png", image)[1].tobytes()

    requests = [
        {"image": np.array([[png(shots[0])]], dtype=object)},
        {"image": np.array([[b"\x89PNG not really"]], dtype=object)},
        {"frame": np.array([[shots[1].tobytes()], [b"xyz"]], dtype=object),
         "size": np.array([[56, 56, 3], [56, 56, 3]], dtype=np.int64)},
        {"image": np.array([[png(shots[2].astype(np.uint16) * 257)]], dtype=object)},
        raw(np.zeros((1, 1, 3), np.uint8)),
        raw(shots[3]),
    ]
    expected = [0, "not an image", 1, "holds 3 bytes", "uint16", "larger than", 3]
    with Pipeline.from_engine(default_onnx) as pipeline:
        responses = infer_requests(pipeline, requests)
        own = [pipeline(shot).to_dict() for shot in shots]
    assert [len(r["label"]) for r in responses] == [1, 1, 2, 1, 1, 1]
    rows = [{name: array[i] for name, array in r.items()} for r in responses for i in range(len(r["label"]))]
    for row, want in zip(rows, expected, strict=True):
        result = json.loads(row["result"][0])
        if isinstance(want, str):
            assert set(result) == {"error"} and want in result["error"] and "\n" not in result["error"]
            assert row["label"][0] == -1 and not row["certified"][0] and row["certified_patch_px"][0] == 0
            assert list(row["masked_box"]) == [-1, -1, -1, -1] and row["class_name"][0] == b""
        else:
            result.pop("latency_ms")
            assert result == {k: v for k, v in own[want].items() if k != "latency_ms"}
            assert row["label"][0] == result["label"] and row["certified"][0] == result["certified"]


def test_a_failing_model_fails_the_batch_rather_than_refusing_its_frames(default_onnx: Path) -> None:
    """The model failing (here: its backend closed under the server) is no fault of the
    frames: the batch fails as a whole (Triton answers every client with an error) instead
    of every good frame coming back as a refused one."""
    from patchguard.runtime.errors import InferenceError
    from patchguard.runtime.pipeline import Pipeline

    frame = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    request = {"frame": np.array([[frame.tobytes()]], dtype=object), "size": np.array([[56, 56, 3]], dtype=np.int64)}
    with Pipeline.from_engine(default_onnx) as pipeline:
        assert infer_requests(pipeline, [request])[0]["label"][0] >= 0
        pipeline.backend.close()
        with pytest.raises(InferenceError, match="backend is closed"):
            infer_requests(pipeline, [request, request])


def test_python_library_folder_is_put_on_the_loader_path() -> None:
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    env = python_libdir_env({"LD_LIBRARY_PATH": "/opt/x"})
    assert env["LD_LIBRARY_PATH"].split(":") == [libdir, "/opt/x"]
    assert python_libdir_env(env)["LD_LIBRARY_PATH"] == env["LD_LIBRARY_PATH"]  # once only


@pytest.mark.skipif(_serve_available(), reason="pytriton is installed here")
def test_pg_serve_without_pytriton_names_the_extra(tmp_path: Path) -> None:
    done = subprocess.run([*PG_SERVE, "--model", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Error:" in done.stderr and "[serve]" in done.stderr and "Traceback" not in done.stderr


@needs_serve
@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_served_results_equal_the_pipeline_over_http_and_grpc(default_onnx: Path, tmp_path: Path) -> None:
    """500 frames from 8 threads over HTTP (PNG) and over gRPC (raw): each answer is Pipeline's."""
    from _pipeline_fixtures import fashion_frames

    from patchguard.runtime.pipeline import Pipeline

    out = tmp_path / "responses.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "serve.py"), "--model", str(default_onnx),
                           "--frames", "500", "--threads", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    got = json.loads(out.read_text())
    with Pipeline.from_engine(default_onnx) as pipeline:
        expected = [pipeline(frame).to_dict() for frame in fashion_frames(500, (56, 56))[0]]
    for key in ("http", "grpc"):
        assert len(got[key]) == 500
        for served, own in zip(got[key], expected):
            served.pop("latency_ms")
            own = {k: v for k, v in own.items() if k != "latency_ms"}
            assert served == own


@needs_serve
@pytest.mark.slow
def test_a_bad_frame_fails_no_other_client_of_its_batch(default_onnx: Path, tmp_path: Path) -> None:
    """A real pg-serve whose dynamic batcher waits long enough to batch every request
    below: the undecodable image and the short raw frame get their one-line refusals,
    the good frames (in the same request, and from the other clients) their labels."""
    import importlib.util
    import threading

    import tritonclient.http as http

    from patchguard.runtime.serving import client_inputs, client_outputs

    spec = importlib.util.spec_from_file_location("serve_bench", BENCHMARKS / "serve.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    good = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)

    def mixed(module: object) -> list:
        frame = http.InferInput("frame", [2, 1], "BYTES")
        frame.set_data_from_numpy(np.array([[good.tobytes()], [b"xyz"]], dtype=object))
        size = http.InferInput("size", [2, 3], "INT64")
        size.set_data_from_numpy(np.array([[56, 56, 3], [56, 56, 3]], dtype=np.int64))
        return [frame, size]

    jobs = {"good0": lambda m: client_inputs(m, frame=good), "good1": lambda m: client_inputs(m, frame=good),
            "junk": lambda m: client_inputs(m, image=b"not an image"), "mixed": mixed}
    answers: dict[str, object] = {}
    with bench.Server(str(default_onnx), tmp_path / "serve.log", ("--queue-delay-us", "1000000")) as server:
        server.wait_ready()

        def send(name: str) -> None:
            client = http.InferenceServerClient(f"localhost:{server.http_port}")
            try:
                response = client.infer("patchguard", jobs[name](http), outputs=client_outputs(http))
                answers[name] = [json.loads(r) for r in response.as_numpy("result").reshape(-1)]
            except Exception as exc:  # what the bug gave every client of the batch
                answers[name] = str(exc)

        threads = [threading.Thread(target=send, args=(name,)) for name in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(isinstance(a, list) for a in answers.values()), answers
    label = answers["good0"][0]["label"]  # type: ignore[index]
    assert label >= 0 and answers["good1"][0]["label"] == label  # type: ignore[index]
    assert "not an image" in answers["junk"][0]["error"]  # type: ignore[index]
    first, second = answers["mixed"]  # type: ignore[misc]
    assert first["label"] == label and "holds 3 bytes" in second["error"]


@needs_serve
@pytest.mark.slow
def test_the_example_client_prints_the_servers_answers(default_onnx: Path, tmp_path: Path) -> None:
    """examples/triton_client.py against a real pg-serve: one JSON line per image, the
    Pipeline's own answer; an undecodable file gets one Error: line and exit status 1."""
    import importlib.util

    cv2 = pytest.importorskip("cv2")
    from _pipeline_fixtures import fashion_frames

    from patchguard.runtime.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("serve_bench", BENCHMARKS / "serve.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    frames = fashion_frames(2, (56, 56))[0]
    images = []
    for n, frame in enumerate(frames):
        images.append(tmp_path / f"frame{n}.png")
        cv2.imwrite(str(images[-1]), frame)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    client = Path(__file__).resolve().parents[2] / "examples" / "triton_client.py"
    with bench.Server(str(default_onnx), tmp_path / "serve.log") as server:
        server.wait_ready()
        done = subprocess.run([sys.executable, str(client), "--url", f"localhost:{server.http_port}",
                               *map(str, images), str(junk)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    with Pipeline.from_engine(default_onnx) as pipeline:
        own = [pipeline(cv2.imread(str(p))).to_dict() for p in images]
    assert [r["label"] for r in rows] == [o["label"] for o in own]
    assert [r["certified"] for r in rows] == [o["certified"] for o in own]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and "junk.png" in errors[0]
