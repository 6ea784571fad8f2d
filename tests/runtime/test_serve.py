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
from patchguard.runtime.serving import decode_request, python_libdir_env, raw_frame

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
    ({"image": np.array([[b"not an image"]], dtype=object)}, "not an image"),
])
def test_bad_requests_are_refused_with_a_reason(request_: dict, message: str) -> None:
    pytest.importorskip("cv2")
    with pytest.raises(PatchGuardError, match=message):
        decode_request(request_)


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
