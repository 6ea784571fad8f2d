"""The Python API: Pipeline.from_engine on real frames of a real exported model."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from _pipeline_fixtures import fashion_frames

from patchguard.runtime.backends import open_backend
from patchguard.runtime.certificate import largest_certified
from patchguard.runtime.datasets import load_fashion_mnist
from patchguard.runtime.defenses import certify
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.footprint import patch_window
from patchguard.runtime.masking import robust_masking
from patchguard.runtime.pipeline import FrameResult, Pipeline, stream
from patchguard.runtime.preprocess import normalize, preprocess, resize_plan
from patchguard.runtime.sources import open_source

cv2 = pytest.importorskip("cv2")
pytestmark = [pytest.mark.fashion_mnist]


def _raw_accuracy(model: Path, count: int) -> float:
    """Robust-masking accuracy of the model on the untouched 28x28 test images."""
    images, labels = load_fashion_mnist("test")
    with open_backend(model) as backend:
        u = backend.infer(normalize(images[:count], backend.record))
    window = patch_window(resize_plan((28, 28), backend.record), (5, 5), backend.record)
    return float(np.mean(robust_masking(u, window)[0] == labels[:count]))


def test_video_through_the_python_api(default_onnx: Path, fashion_video) -> None:
    video, labels = fashion_video
    with Pipeline.from_engine(default_onnx) as pipeline, open_source(str(video)) as source:
        items = list(stream(pipeline, source))
    assert len(items) == 120
    results = [item.result for item in items]
    assert all(isinstance(r, FrameResult) for r in results)
    predicted = np.array([r.label for r in results])
    # The video went through upscaling and MJPG: allow a little below the
    # model's own accuracy on the clean arrays, never much.
    assert np.mean(predicted == labels) >= _raw_accuracy(default_onnx, 120) - 0.15
    assert any(r.certified for r in results)
    for r in results:
        assert r.frame_size == (112, 112)
        assert r.patch_px == 20  # 5 model px x 4 camera px per model px
        assert r.certified == (r.certified_patch_px == r.patch_px)
        assert 0 <= r.certified_patch_px <= r.patch_px
        assert set(r.latency_ms) == {"pre", "infer", "certify"}
        if r.masked_box is not None:
            x0, y0, x1, y1 = r.masked_box
            assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112


def test_results_match_the_defense_on_the_backend_logits(default_onnx: Path) -> None:
    frames, _ = fashion_frames(24, (96, 160), start=300)  # non-square frames
    with Pipeline.from_engine(default_onnx, patch_size=12) as pipeline:
        threat = pipeline.threat((96, 160))
        results = pipeline.run_batch(frames)
        single = [pipeline(f) for f in frames]
        with open_backend(default_onnx) as backend:
            u = backend.infer(preprocess(frames, backend.record))
    assert threat.window[0] != threat.window[1]  # 96 rows and 160 columns scale differently
    labels = robust_masking(u, threat.window)[0]
    assert [r.label for r in results] == labels.tolist() == [r.label for r in single]
    assert [r.certified for r in results] == certify(u, threat.window, labels=labels).tolist()
    best = largest_certified(u, threat.window, list(threat.patch_windows), labels=labels)
    for i, (r, k) in enumerate(zip(results, best)):
        assert r.certified_patch_px == (threat.sizes[k] if k >= 0 else 0)
        one, y = u[i : i + 1], labels[i : i + 1]
        if k >= 0:  # the certified size holds ...
            assert certify(one, threat.window, patch_window=threat.patch_windows[k], labels=y)[0]
        if k + 1 < len(threat.patch_windows):  # ... and the next listed one does not
            assert not certify(one, threat.window, patch_window=threat.patch_windows[k + 1], labels=y)[0]


def test_certified_frames_survive_patches_in_camera_pixels(default_onnx: Path) -> None:
    """End to end: paste patches up to the certified size anywhere; the label holds."""
    frames, _ = fashion_frames(60, (84, 140), start=1000)
    rng = np.random.default_rng(5)
    donors, _ = fashion_frames(20, (84, 140), start=2000)
    attacked = 0
    with Pipeline.from_engine(default_onnx, patch_size=14) as pipeline:
        for frame in frames:
            clean = pipeline(frame)
            side = clean.certified_patch_px
            if side == 0:
                continue
            for _ in range(25):
                patched = frame.copy()
                top = int(rng.integers(0, 84 - side + 1))
                left = int(rng.integers(0, 140 - side + 1))
                kind = rng.integers(0, 3)
                if kind == 0:
                    content = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
                elif kind == 1:
                    content = np.full((side, side, 3), 255 * int(rng.integers(0, 2)), np.uint8)
                else:  # a piece of another garment
                    donor = donors[int(rng.integers(0, len(donors)))]
                    dy, dx = int(rng.integers(0, 84 - side + 1)), int(rng.integers(0, 140 - side + 1))
                    content = donor[dy : dy + side, dx : dx + side]
                patched[top : top + side, left : left + side] = content
                assert pipeline(patched).label == clean.label
                attacked += 1
    if attacked == 0:
        pytest.skip("the model certified no frame at this patch size; nothing to attack")


def test_concurrent_calls_from_several_threads(default_onnx: Path) -> None:
    frames, _ = fashion_frames(32, (120, 90), start=500)
    with Pipeline.from_engine(default_onnx) as pipeline:
        expected = [pipeline(f) for f in frames]
        got: dict[int, FrameResult] = {}
        errors: list[BaseException] = []

        def work(offset: int) -> None:
            try:
                for _ in range(3):
                    for i in range(offset, len(frames), 4):
                        got[i] = pipeline(frames[i])
            except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for i, result in enumerate(expected):
        other = got[i]
        assert (other.label, other.certified, other.certified_patch_px, other.masked_box) == \
            (result.label, result.certified, result.certified_patch_px, result.masked_box)


def test_user_errors_are_one_line(default_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(PatchGuardError, match="either"):
        Pipeline.from_engine(default_onnx, patch_size=5, patch_frac=0.1)
    with pytest.raises(PatchGuardError, match="threshold"):
        Pipeline.from_engine(default_onnx, thres=1.0)
    with Pipeline.from_engine(default_onnx, patch_frac=0.9) as pipeline, \
            pytest.raises(PatchGuardError, match="needs a .* window, larger than the"):
        pipeline(np.zeros((100, 100, 3), np.uint8))
    for suffix in (".onnx", ".plan"):
        junk = tmp_path / f"junk{suffix}"
        junk.write_bytes(np.random.default_rng(0).bytes(4096))
        with pytest.raises(PatchGuardError) as info:
            Pipeline.from_engine(junk)
        assert "\n" not in str(info.value)


def test_gray_and_bgra_frames(default_onnx: Path) -> None:
    frames, _ = fashion_frames(1, (56, 56))
    bgr = frames[0]
    with Pipeline.from_engine(default_onnx) as pipeline:
        a = pipeline(bgr)
        b = pipeline(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        c = pipeline(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    assert a.label == b.label == c.label


def test_certify_maps_agrees_with_the_library_and_refuses_nan() -> None:
    """The pipeline's certify stage on synthetic maps: labels and certificates equal
    robust_masking / certify, certified sizes equal largest_certified, NaN maps get nothing."""
    from patchguard.runtime.cli.bench import synthetic_record
    from patchguard.runtime.footprint import camera_threat, patch_side
    from patchguard.runtime.pipeline import certify_maps

    for classes in (10, 200):
        record = synthetic_record(26, 26, classes)
        plan = resize_plan((480, 640), record)
        threat = camera_threat(plan, record, patch_side(plan, record))
        rng = np.random.default_rng(classes)
        u = rng.normal(0.0, 1.0, size=(12, 26, 26, classes)).astype(np.float32)
        u[..., 3] += np.linspace(0.0, 0.4, 12, dtype=np.float32)[:, None, None]
        u[5, 2, 2, 0] = np.nan
        v = certify_maps(u, threat, record, 0.0, None)
        labels = robust_masking(u, threat.window)[0]
        assert v.labels.tolist() == labels.tolist() and labels[5] == -1
        ok = np.flatnonzero(labels >= 0)
        assert v.certified[ok].tolist() == certify(u[ok], threat.window, labels=labels[ok]).tolist()
        best = largest_certified(u[ok], threat.window, list(threat.patch_windows), labels=labels[ok])
        sizes = np.asarray((0,) + threat.sizes)
        assert v.certified_patch_px[ok].tolist() == sizes[best + 1].tolist()
        assert not v.certified[5] and v.certified_patch_px[5] == 0 and v.boxes[5] is None
        assert 0 < v.certified.sum() < 11  # the margins span the decision boundary
