"""Static receptive-field proofs of ONNX graphs (runtime/verify.py).

Genuine exports prove with the exact r and s of their records (the bundled
model, fp16 and INT8 variants, BagNet-9/17/33 at 224); models that keep the
bundled model's metadata but mix positions are refused, naming the node; and
on random conv/pool stacks every proved field is checked against the
model's real dependencies, measured by changing one pixel at a time in
onnxruntime.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from _calibration_fixtures import SAMPLES, write_images
from _lying_models import build_lying_models

from patchguard.runtime.verify import VerificationError, check_proof_fits_record, prove, verify

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def bundled(default_onnx: Path) -> Path:
    return default_onnx


def _record(path: Path):
    import onnx

    from patchguard.export.onnxfile import get_record

    return get_record(onnx.load(str(path), load_external_data=False))


def test_bundled_model_and_its_fp16_and_int8_variants_prove(bundled: Path, tmp_path: Path) -> None:
    import onnx

    from patchguard.export.fp16 import to_fp16
    from patchguard.export.onnxfile import save_onnx
    from patchguard.export.pipeline import write_int8

    record = _record(bundled)
    fp16 = save_onnx(to_fp16(onnx.load(str(bundled))), tmp_path / "bundled.fp16.onnx")
    images = tmp_path / "images"
    write_images(images, 16)
    variants = [bundled, fp16] + [
        write_int8(bundled, tmp_path / f"bundled.{flavor}.onnx", record, str(images), 16, flavor,
                   tmp_path / "cache")
        for flavor in ("tensorrt", "cpu")]
    for path in variants:
        proof = verify(path, record)
        for axis in (proof.rows, proof.cols):
            assert (axis.receptive_field, axis.stride, axis.offset) == (record.receptive_field,
                                                                         record.stride, 0)
            assert axis.cells == record.map_size[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch,r", [("bagnet9", 9), ("bagnet17", 17), ("bagnet33", 33)])
def test_official_bagnets_prove(arch: str, r: int, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import build_model, record_for

    torch.manual_seed(0)
    record = record_for(arch)
    path = save_onnx(export_onnx(build_model(record).eval(), record), tmp_path / f"{arch}.onnx")
    start = time.perf_counter()
    proof = verify(path, record)
    print(f"{arch}: proved {proof.describe()} in {time.perf_counter() - start:.2f} s")
    assert (proof.rows.receptive_field, proof.rows.stride, proof.rows.offset) == (r, 8, 0)
    assert proof.to_dict()["map_size"] == list(record.map_size)


def test_lying_models_are_refused_naming_the_node(bundled: Path) -> None:
    import onnxruntime as ort

    record = _record(bundled)
    models = build_lying_models(bundled)
    assert len(models) >= 11
    image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    expected = {
        "global-mean": "lie_mean", "padded-maxpool": "cell", "brightest-pixel": "lie_bright",
        "global-pool-conv": "lie_gap", "padded-conv-stack": "cell", "resize": "lie_resize",
        "reshape-across-cells": "lie_reshape", "custom-op": "lie_custom",
        "reflect-pad": "lie_reflect", "softmax-over-rows": "lie_softmax",
        "matmul-across-columns": "lie_matmul",
    }
    for name, model in models.items():
        if name != "custom-op":  # a real model: it runs and keeps the 24x24x10 shape
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            assert session.run(None, {"input": image})[0].shape == (1, 24, 24, 10), name
        with pytest.raises(VerificationError) as caught:
            verify(model, record)
        message = str(caught.value)
        assert expected[name] in message, (name, message)
        assert "\n" not in message


def test_padding_shifts_offsets_and_never_widens(bundled: Path) -> None:
    models = build_lying_models(bundled)
    pooled = prove(models["padded-maxpool"])
    assert (pooled.rows.receptive_field, pooled.rows.offset, pooled.rows.cells) == (9, -2, 24)
    stacked = prove(models["padded-conv-stack"])
    assert (stacked.cols.receptive_field, stacked.cols.offset, stacked.cols.cells) == (9, -2, 24)


# --------------------------------------------------------------------------
# Proofs against measured dependencies.

def _random_stack(rng: np.random.Generator, size: int):
    """A random conv/pool stack on a (1, 1, size, size) image, output (1, H, W, 2)."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits = [], []
    current, channels = "input", 1
    for k in range(int(rng.integers(1, 4))):
        kind = ["Conv", "MaxPool", "AveragePool"][int(rng.integers(3))]
        kernel = [int(v) for v in rng.integers(1, 4, size=2)]
        attrs = dict(kernel_shape=kernel, strides=[int(v) for v in rng.integers(1, 3, size=2)])
        pad_mode = int(rng.integers(4))
        if pad_mode == 1:
            attrs["pads"] = [int(v) for v in rng.integers(0, 2, size=4)]
            attrs["pads"] = [min(p, kernel[i % 2] - 1) for i, p in enumerate(attrs["pads"])]
        elif pad_mode == 2:
            attrs["auto_pad"] = ["SAME_UPPER", "SAME_LOWER"][int(rng.integers(2))]
        if kind != "AveragePool" and rng.random() < 0.4:
            attrs["dilations"] = [int(v) for v in rng.integers(1, 3, size=2)]
        if kind != "Conv" and rng.random() < 0.4 and pad_mode != 2:
            attrs["ceil_mode"] = 1
        out = f"t{k}"
        if kind == "Conv":
            weight = rng.normal(size=(2, channels, *kernel)).astype(np.float32)
            inits.append(numpy_helper.from_array(weight, f"w{k}"))
            nodes.append(helper.make_node("Conv", [current, f"w{k}"], [out], name=f"conv{k}", **attrs))
            channels = 2
        else:
            nodes.append(helper.make_node(kind, [current], [out], name=f"pool{k}", **attrs))
        nodes.append(helper.make_node("Tanh", [out], [out + "a"], name=f"act{k}"))
        current = out + "a"
    if channels == 1:
        inits.append(numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "wlast"))
        nodes.append(helper.make_node("Conv", [current, "wlast"], ["tl"], name="convlast"))
        current = "tl"
    nodes.append(helper.make_node("Transpose", [current], ["local_logits"], name="nhwc", perm=[0, 2, 3, 1]))
    graph = helper.make_graph(
        nodes, "stack",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [None, 1, size, size])],
        [helper.make_tensor_value_info("local_logits", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_proved_fields_contain_every_measured_dependency() -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    size, checked = 13, 0
    for _ in range(40):
        model = _random_stack(rng, size)
        try:
            proof = prove(model)
        except VerificationError as exc:
            assert "auto_pad SAME with dilation" in str(exc)
            continue
        base = rng.normal(size=(1, 1, size, size)).astype(np.float32)
        # one image per pixel, that pixel changed
        batch = np.repeat(base, size * size, axis=0)
        batch.reshape(size * size, -1)[np.arange(size * size), np.arange(size * size)] += 5.0
        try:
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            ref = session.run(None, {"input": base})[0]
        except Exception:  # an attribute mix onnxruntime refuses (e.g. pads it finds negative)
            continue
        out = session.run(None, {"input": batch})[0]
        assert ref.shape[1:3] == (proof.rows.cells, proof.cols.cells)
        changed = np.abs(out - ref).max(axis=3) > 1e-6  # (pixels, H, W)
        for p, i, j in zip(*np.nonzero(changed)):
            y, x = divmod(int(p), size)
            for pixel, cell, axis in ((y, i, proof.rows), (x, j, proof.cols)):
                lo = axis.offset + int(cell) * axis.stride
                assert lo <= pixel <= lo + axis.receptive_field - 1
        checked += 1
    assert checked >= 20


def test_check_proof_fits_record_wants_the_records_stride_and_map() -> None:
    import onnx
    from onnx import helper, numpy_helper

    from patchguard.runtime.metadata import ModelRecord

    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="c3", strides=[2, 2]),
         helper.make_node("Transpose", ["c"], ["out"], name="t", perm=[0, 2, 3, 1])], "g",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [None, 1, 11, 11])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proof = prove(model)
    assert proof.describe() == "r=3x3, s=2x2, offset=0,0, map 5x5"
    base = dict(arch="x", num_classes=2, input_size=(11, 11), mean=(0.0,), std=(1.0,), in_channels=1)
    check_proof_fits_record(proof, ModelRecord(receptive_field=3, stride=2, **base))
    with pytest.raises(VerificationError, match="stride 2"):
        check_proof_fits_record(proof, ModelRecord(receptive_field=3, stride=1, **base))


# --------------------------------------------------------------------------
# Every certifying entry point refuses a lying model; --allow-unverified certifies nothing.



@pytest.fixture(scope="module")
def lying_files(bundled: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from _lying_models import save_lying_models

    return save_lying_models(bundled, tmp_path_factory.mktemp("lies"))


def _invoke(main, args: list) -> object:
    from click.testing import CliRunner

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(result) -> str:
    text = result.output
    assert result.exit_code != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    return errors[0]


def test_every_entry_point_refuses_every_lying_model(lying_files: dict, tmp_path: Path) -> None:
    from patchguard.export.cli import main as export_main
    from patchguard.runtime import PatchGuardError
    from patchguard.runtime.cli.bench import main as bench_main
    from patchguard.runtime.cli.certify import main as certify_main
    from patchguard.runtime.cli.run import main as run_main
    from patchguard.runtime.pipeline import Pipeline

    frames = SAMPLES / "0-t-shirt-top"
    for name, path in lying_files.items():
        commands = {
            "pg-run": (run_main, ["--engine", path, "--source", frames, "--max-frames", 2,
                                  "--jsonl", tmp_path / f"{name}.jsonl"]),
            "pg-certify": (certify_main, ["--engine", path, "--data", SAMPLES, "--patch-size", 3]),
            "pg-bench": (bench_main, ["--engine", path, "--source", frames, "--max-frames", 2]),
            "pg-export --onnx": (export_main, ["--onnx", path, "--out", tmp_path / f"export-{name}",
                                               "--no-engine"]),
        }
        for command, (main, args) in commands.items():
            line = _one_error_line(_invoke(main, args))
            if name != "custom-op":  # onnxruntime itself cannot load an op it does not know
                assert "not proved local" in line, (name, command, line)
        assert not (tmp_path / f"export-{name}").exists() or not any((tmp_path / f"export-{name}").iterdir())
        with pytest.raises(PatchGuardError):
            Pipeline.from_engine(path)


def test_allow_unverified_gives_labels_only(lying_files: dict, tmp_path: Path) -> None:
    import cv2

    from patchguard.runtime.cli.certify import main as certify_main
    from patchguard.runtime.cli.run import main as run_main
    from patchguard.runtime.pipeline import Pipeline

    path = lying_files["global-mean"]
    frames = SAMPLES / "0-t-shirt-top"
    out = tmp_path / "frames.jsonl"
    result = _invoke(run_main, ["--engine", path, "--source", frames, "--max-frames", 3,
                                "--jsonl", out, "--allow-unverified"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "frame"]
    assert len(rows) == 3
    for row in rows:
        assert row["certified"] is False and row["certified_patch_px"] == 0
        assert "lie_mean" in row["uncertified_reason"]
        assert row["label"] >= 0
    report = tmp_path / "report.json"
    result = _invoke(certify_main, ["--engine", path, "--data", SAMPLES, "--patch-size", 3,
                                    "--allow-unverified", "--json", report])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert "lie_mean" in data["uncertified_reason"]
    for row in data["results"]:
        assert all(d["certified"] == 0.0 for d in row["defenses"].values())
        assert all(d["certified"] == 0.0 for d in row["detection"])
    with Pipeline.from_engine(path, allow_unverified=True) as pipeline:
        frame = cv2.imread(str(next(iter(sorted(frames.iterdir())))), cv2.IMREAD_GRAYSCALE)
        found = pipeline(frame)
        assert found.certified is False and found.top_k_certified is None
        assert "lie_mean" in (found.uncertified_reason or "")


def test_allow_unverified_certifies_nothing_for_any_lying_model(lying_files: dict, tmp_path: Path) -> None:
    from patchguard.runtime.cli.bench import main as bench_main
    from patchguard.runtime.cli.run import main as run_main

    frames = SAMPLES / "1-trouser"
    for name, path in lying_files.items():
        if name == "custom-op":  # onnxruntime cannot run it at all
            continue
        out = tmp_path / f"{name}.jsonl"
        result = _invoke(run_main, ["--engine", path, "--source", frames, "--max-frames", 2,
                                    "--jsonl", out, "--allow-unverified"])
        assert result.exit_code == 0, (name, result.output)
        rows = [r for r in map(json.loads, out.read_text().splitlines()) if r.get("kind") == "frame"]
        assert len(rows) == 2 and not any(r["certified"] or r["certified_patch_px"] for r in rows), name
        assert all("not proved local" in r["uncertified_reason"] for r in rows), name
        result = _invoke(bench_main, ["--engine", path, "--source", frames, "--max-frames", 6,
                                      "--allow-unverified"])
        assert result.exit_code == 0, (name, result.output)


def test_genuine_model_still_certifies_and_reports_its_proof(bundled: Path, tmp_path: Path) -> None:
    from patchguard.runtime.pipeline import Pipeline

    with Pipeline.from_engine(bundled) as pipeline:
        assert pipeline.unverified is None and pipeline.backend.proof.rows.receptive_field == 5


def test_export_parity_report_holds_the_proved_geometry(bundled: Path, tmp_path: Path) -> None:
    from patchguard.export.cli import main as export_main

    out = tmp_path / "out"
    result = _invoke(export_main, ["--onnx", bundled, "--out", out, "--name", "m", "--fp16", "--no-engine"])
    assert result.exit_code == 0, result.output
    proved = json.loads((out / "m.parity.json").read_text())["proved_geometry"]
    assert set(proved) == {bundled.name, "m.fp16.onnx"}
    for geometry in proved.values():
        assert geometry["receptive_field"] == [5, 5] and geometry["stride"] == [1, 1]
        assert geometry["offset"] == [0, 0] and geometry["map_size"] == [24, 24]


# --------------------------------------------------------------------------
# Engines are trusted by provenance: the sidecar's ONNX digest and proved geometry.

def _fake_engine(folder: Path, record, **provenance) -> Path:
    """A .plan (not a real engine: every check here runs before TensorRT is touched)
    and its sidecar, as pg-export writes them."""
    from patchguard.runtime.metadata import EngineInfo, sidecar_path, sidecar_text

    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "model.plan"
    plan.write_bytes(b"not an engine")
    info = EngineInfo(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                      precision="fp16", max_batch=4, input_name="input", output_name="local_logits",
                      **provenance)
    sidecar_path(plan).write_text(sidecar_text(record, info))
    return plan


def test_engine_sidecars_must_carry_a_digest_and_a_fitting_proof(bundled: Path, lying_files: dict,
                                                                  tmp_path: Path) -> None:
    from patchguard.runtime import PatchGuardError
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.cli.run import main as run_main
    from patchguard.runtime.verify import onnx_digest

    record = _record(bundled)
    good = {"onnx_sha256": onnx_digest(bundled), "proved_geometry": verify(bundled, record).to_dict()}

    def refusal(plan: Path, **kw) -> str:
        with pytest.raises(PatchGuardError) as caught:
            open_backend(plan, **kw)
        return str(caught.value)

    old = _fake_engine(tmp_path / "old", record)
    assert "no ONNX digest and proved geometry" in refusal(old)
    # labels only: the refusal is gone; what stops it now is the missing TensorRT / GPU
    assert "not proved local" not in refusal(old, allow_unverified=True)

    wide = dict(good, proved_geometry=prove(build_lying_models(bundled)["padded-maxpool"]).to_dict())
    assert "outside the record's" in refusal(_fake_engine(tmp_path / "wide", record, **wide))

    plan = _fake_engine(tmp_path / "good", record, **good)
    assert "not proved local" not in refusal(plan)
    assert "not proved local" not in refusal(plan, onnx=bundled)  # the same file, proved again
    lie = lying_files["global-mean"]
    assert "is not the ONNX it was built from" in refusal(plan, onnx=lie)
    line = _one_error_line(_invoke(run_main, ["--engine", plan, "--onnx", lie, "--source", SAMPLES]))
    assert "is not the ONNX it was built from" in line
    line = _one_error_line(_invoke(run_main, ["--engine", bundled, "--onnx", bundled, "--source", SAMPLES]))
    assert "is not an engine" in line


def _tiny_graph(nodes: list, inits: list, batch: object = 1):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_slicing_the_batch_axis_is_refused() -> None:
    """Frame 0 sliced off and added to every frame: a patch in one frame of a
    batch would change another frame's cells (onnxruntime runs it)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    def ints(name: str, v: list) -> object:
        return numpy_helper.from_array(np.array(v, np.int64), name)

    model = _tiny_graph([
        helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["f0"]),
        helper.make_node("Add", ["x", "f0"], ["a"]),
        helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 3, 1])],
        [ints("s0", [0]), ints("s1", [1]), ints("ax", [0])], batch="N")
    session = ort.InferenceSession(model.SerializeToString())
    x = np.zeros((2, 1, 8, 8), np.float32)
    before = session.run(None, {"x": x})[0]
    x[0, 0, 0, 0] = 5.0
    assert (session.run(None, {"x": x})[0][1] != before[1]).any()  # frame 1 reads frame 0
    with pytest.raises(VerificationError, match="batch"):
        prove(model)


def test_conv_kernel_shape_must_match_its_weights() -> None:
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    model = _tiny_graph([
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])], [weight])
    with pytest.raises(VerificationError, match="kernel_shape"):
        prove(model)


def test_a_constant_broadcast_along_a_spatial_axis_is_refused() -> None:
    """A one-row map plus an (8, 1) constant is 8 rows of copies: the proof
    would count 1 cell where the runtime sees 8."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = _tiny_graph([
        helper.make_node("Conv", ["x", "w"], ["k"]),
        helper.make_node("Add", ["k", "c"], ["a"]),
        helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 3, 1])],
        [numpy_helper.from_array(np.ones((1, 1, 8, 3), np.float32), "w"),
         numpy_helper.from_array(np.zeros((1, 1, 8, 1), np.float32), "c")])
    out = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.zeros((1, 1, 8, 8), np.float32)})[0]
    assert out.shape == (1, 8, 6, 1)
    with pytest.raises(VerificationError, match="broadcasts a constant"):
        prove(model)
