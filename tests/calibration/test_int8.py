"""INT8 calibration: flavours read from the graph, metadata, cache, errors, agreement with fp32."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from _calibration_fixtures import SAMPLES, write_images

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("cv2")

from patchguard.calibration.data import FASHION_MNIST, CalibrationReader, calibration_source
from patchguard.calibration.int8 import (
    DEFAULT_FLAVOR,
    FLAVOR_HELP,
    FLAVORS,
    cache_path,
    float_head,
    int8_path,
    quantize_int8,
)
from patchguard.export.agreement import measure
from patchguard.export.onnxfile import get_record, input_name, load_onnx
from patchguard.export.pipeline import write_int8
from patchguard.runtime import window_size
from patchguard.runtime.backends import open_backend
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import METADATA_KEY, ModelRecord
from patchguard.runtime.preprocess import preprocess

QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def fp32(default_onnx: Path) -> Path:
    return default_onnx


@pytest.fixture(scope="module")
def record(fp32: Path) -> ModelRecord:
    return get_record(load_onnx(fp32))


@pytest.fixture(scope="module")
def quantized(fp32: Path, record: ModelRecord, tmp_path_factory) -> dict[str, Path]:
    """Each flavour, calibrated on the bundled sample images, as pg-export writes it."""
    out = {}
    for name in FLAVORS:
        folder = tmp_path_factory.mktemp(name)
        out[name] = write_int8(fp32, folder / "fashion.int8.onnx", record, str(SAMPLES), 64, name, folder)
    return out


def zero_points(model) -> dict[str, np.ndarray]:
    """Zero-point initializer of every Q/DQ node, by node name."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[2]] for n in model.graph.node
            if n.op_type in QDQ and len(n.input) > 2}


def logits(path: Path, batch: np.ndarray) -> np.ndarray:
    """Local logits through the runtime's batched path: the 10,000 test images in one
    onnxruntime call would hold about 8 GB of activations."""
    with open_backend(path) as backend:
        return backend.infer_all(batch, 500)


def sample_batch(record: ModelRecord, count: int = 200) -> np.ndarray:
    import cv2

    files = sorted(SAMPLES.rglob("*.png"))[:count]
    return preprocess([cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files], record)


def test_tensorrt_flavour_is_s8s8_with_zero_points_0(quantized: dict[str, Path]) -> None:
    model = onnx.load(str(quantized["tensorrt"]))
    points = zero_points(model)
    assert points, "no QuantizeLinear/DequantizeLinear nodes with zero points"
    # int8 everywhere (no int32 bias DequantizeLinear: TensorRT has none), zero points 0
    assert all(z.dtype == np.int8 for z in points.values())
    assert all(not z.any() for z in points.values())
    # Weights are quantized per output channel: some DequantizeLinear has a scale vector.
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(s.size > 1 for s in scales)


def test_cpu_flavours_are_u8_activations_s8_weights(quantized: dict[str, Path]) -> None:
    for name in ("cpu", "cpu-avx2"):
        dtypes = {z.dtype for z in zero_points(onnx.load(str(quantized[name]))).values()}
        # uint8 activations, int8 weights, int32 biases (onnxruntime's CPU layout)
        assert {np.dtype(np.uint8), np.dtype(np.int8)} <= dtypes, name
        assert dtypes <= {np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32)}, name


def test_classifier_head_stays_float(fp32: Path, quantized: dict[str, Path]) -> None:
    for path in quantized.values():
        model = onnx.load(str(path))
        producer = {o: n for n in model.graph.node for o in n.output}
        last = producer[model.graph.output[0].name]
        assert last.op_type not in QDQ  # the local logits are not rounded to 8 bits
        assert set(float_head(model)) <= {n.name for n in model.graph.node}


def test_int8_models_agree_with_fp32(fp32: Path, record: ModelRecord,
                                     quantized: dict[str, Path]) -> None:
    batch = sample_batch(record)
    reference = logits(fp32, batch)
    window = window_size(record.default_patch_px, record.receptive_field, record.stride)
    for name, path in quantized.items():
        out = logits(path, batch)
        assert out.shape == reference.shape and out.dtype == np.float32
        agreement = measure(reference, out, window)
        # A sanity bar on 200 images; the 98% acceptance runs on the test set (slow test).
        assert agreement.prediction_agreement >= 0.95, (name, agreement)


def test_metadata_is_kept_and_names_the_flavour(fp32: Path, record: ModelRecord,
                                                quantized: dict[str, Path]) -> None:
    original = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    for name, path in quantized.items():
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert set(original) <= set(props)
        assert ModelRecord.from_json(props[METADATA_KEY]) == record
        info = json.loads(props[METADATA_KEY])
        assert info["precision"] == "int8"
        assert info["int8"]["flavor"] == name
        assert info["int8"]["calib_images"] == 64
        from patchguard.export.onnxfile import precision_of

        assert precision_of(onnx.load(str(path))) == "int8"


def test_quantize_int8_is_model_in_model_out(fp32: Path, record: ModelRecord, tmp_path: Path) -> None:
    """The calibration step neither reads nor writes files nor labels: export/pipeline.py does."""
    model = load_onnx(fp32)
    write_images(tmp_path / "images", 5)
    reader = CalibrationReader(calibration_source(str(tmp_path / "images"), 5), record, input_name(model))
    int8 = quantize_int8(model, reader, "cpu")
    assert isinstance(int8, onnx.ModelProto) and reader.images == 5
    assert any(node.op_type in QDQ for node in int8.graph.node)
    # Whatever onnxruntime carried over, nothing was labelled int8 here.
    info = json.loads({p.key: p.value for p in int8.metadata_props}.get(METADATA_KEY, "{}"))
    assert "precision" not in info and "int8" not in info
    assert list(tmp_path.iterdir()) == [tmp_path / "images"]  # no cache asked for, none written
    # A cache hit decodes no image and says how many images the ranges came from: the files are
    # zeroed behind the cache's back (same sizes and times, so the same key); a miss could not run.
    cache = tmp_path / "ranges.calib.json"

    def reader() -> CalibrationReader:
        return CalibrationReader(calibration_source(str(tmp_path / "images"), 5), record, input_name(model))

    quantize_int8(model, reader(), "cpu", cache=cache)
    for path in (tmp_path / "images").iterdir():
        stat = path.stat()
        path.write_bytes(bytes(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = reader()
    assert isinstance(quantize_int8(model, again, "cpu", cache=cache), onnx.ModelProto)
    assert again.images == 5
    with pytest.raises(PatchGuardError, match="no readable image"):
        quantize_int8(model, reader(), "cpu", cache=tmp_path / "other.calib.json")


def test_cache_hit_skips_calibration_and_changes_invalidate(
        fp32: Path, record: ModelRecord, tmp_path: Path, caplog) -> None:
    data = tmp_path / "images"
    write_images(data, 6)
    out = tmp_path / "m.int8.onnx"
    cache = cache_path(out, "cpu", tmp_path)

    def run(model: Path = fp32, flavour: str = "cpu") -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="patchguard.calibration"):
            write_int8(model, out, record, str(data), 6, flavour, tmp_path)
        return " ".join(r.getMessage() for r in caplog.records)

    assert "calibrated on 6 images" in run()
    assert cache.is_file()
    first = out.read_bytes()
    key = json.loads(cache.read_text())["patchguard_key"]

    log = run()
    assert "cache hit" in log and "calibrated on" not in log
    assert out.read_bytes() == first  # same ranges, same model

    write_images(data / "new", 1, seed=9)  # changed data
    assert "calibrated on 6 images" in run()
    assert json.loads(cache.read_text())["patchguard_key"] != key

    changed = tmp_path / "changed.onnx"  # changed model bytes
    model = onnx.load(str(fp32))
    model.metadata_props.add(key="note", value="retrained")
    onnx.save(model, str(changed))
    assert "calibrated on" in run(changed)
    assert "cache hit" in run(changed)

    assert "calibrated on" in run(flavour="tensorrt")  # a flavour has its own cache
    assert cache_path(out, "tensorrt", tmp_path).is_file()
    assert "cache hit" in run(changed)


def test_bad_input_is_one_line_and_leaves_no_file(fp32: Path, record: ModelRecord,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.int8.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    text_only = tmp_path / "text"
    text_only.mkdir()
    (text_only / "labels.txt").write_text("0 1 2")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "x.png").write_bytes(b"not a png")
    cases = [
        (dict(calib_data=str(empty)), "holds no images"),
        (dict(calib_data=str(text_only)), "holds no images"),
        (dict(calib_data=str(corrupt)), "no readable image"),
        (dict(flavor="fp8"), "unknown INT8 flavour"),
        (dict(calib_size=0), "positive"),
        (dict(fp32=tmp_path / "missing.onnx"), "does not exist"),
        (dict(fp32=not_onnx), "not an ONNX model"),
        # A record that disagrees with the graph: onnxruntime's complaint, in one line.
        (dict(record=record.replace(input_size=(32, 32))), "INT8 quantization failed"),
    ]
    for change, fragment in cases:
        args = dict(fp32=fp32, target=out, record=record, calib_data=str(SAMPLES),
                    calib_size=8, flavor="cpu", cache_dir=tmp_path / "out")
        args.update(change)
        with pytest.raises(PatchGuardError, match=fragment) as info:
            write_int8(**args)
        assert "\n" not in str(info.value)
        assert not out.exists()
    assert not (tmp_path / "out").exists() or not any(
        p.suffix == ".onnx" for p in (tmp_path / "out").iterdir())


def test_flavour_table_and_help() -> None:
    assert DEFAULT_FLAVOR in FLAVORS
    assert all(name in FLAVOR_HELP for name in FLAVORS)
    assert FLAVORS["tensorrt"].symmetric and FLAVORS["tensorrt"].activation_type == "QInt8"
    assert int8_path(Path("a/model.onnx")) == Path("a/model.int8.onnx")


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("flavour", [DEFAULT_FLAVOR, "cpu"], ids=lambda f: f"flavour={f}")
def test_acceptance_on_the_fashion_mnist_test_set(fp32: Path, record: ModelRecord,
                                                  tmp_path: Path, flavour: str) -> None:
    """Issue 5: >= 98% prediction agreement, <= 2 points certified-accuracy drop (5x5 patch)."""
    from patchguard.calibration.data import DEFAULT_CALIB_SIZE
    from patchguard.runtime.datasets import load_fashion_mnist

    out = write_int8(fp32, tmp_path / "m.int8.onnx", record, FASHION_MNIST,
                     DEFAULT_CALIB_SIZE, flavour, tmp_path)
    images, labels = load_fashion_mnist("test")
    batch = preprocess(list(images), record)
    window = window_size(5, record.receptive_field, record.stride)
    agreement = measure(logits(fp32, batch), logits(out, batch), window, labels=labels)
    assert agreement.shortfall(f"{flavour} int8", "fp32") is None, agreement
