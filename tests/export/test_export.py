"""pg-export end to end: a PatchGuard-format BagNet-17 at 224 px, the small model, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _export_fixtures import assert_one_line_error, run_cli, visible_files

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from patchguard.export.engine import engine_unavailable_reason
from patchguard.models import bagnet17, load_checkpoint, record_for, save_checkpoint
from patchguard.runtime.backends import open_backend
from patchguard.runtime.metadata import METADATA_KEY, ModelRecord


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


# -- BagNet-17, PatchGuard's checkpoint layout, 224 px (one export for the module) ----------------

@pytest.fixture(scope="module")
def b17(tmp_path_factory):
    folder = tmp_path_factory.mktemp("b17")
    torch.manual_seed(17)
    model = bagnet17(num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    record = record_for("bagnet17", num_classes=10)
    checkpoint = save_checkpoint(model, record, folder / "imagenette_bagnet17.pth",
                                 layout="model_state_dict")
    content = torch.load(checkpoint, weights_only=True)
    assert set(content) == {"model_state_dict"}
    assert all(k.startswith("module.") for k in content["model_state_dict"])
    out = folder / "out"
    result = run_cli(["--checkpoint", str(checkpoint), "--fp16", "--input-size", "224", "--out", str(out),
                      "--name", "b17", "--parity-n", "6", "--no-engine"])
    assert result.exit_code == 0, result.output
    loaded, _ = load_checkpoint(checkpoint)
    return {"out": out, "model": loaded, "output": result.output}


def test_bagnet17_onnx_is_clean_with_metadata_and_dynamic_batch(b17):
    model = onnx.load(str(b17["out"] / "b17.onnx"))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    record = ModelRecord.from_json(meta[METADATA_KEY])
    assert (record.arch, record.receptive_field, record.stride, record.num_classes) == ("bagnet17", 17, 8, 10)
    data = json.loads(meta[METADATA_KEY])
    for key in ("arch", "num_classes", "input_size", "mean", "std", "receptive_field", "stride", "class_names"):
        assert key in data
    batch_in = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch_out = model.graph.output[0].type.tensor_type.shape.dim[0]
    assert batch_in.dim_param and batch_out.dim_param  # symbolic, not fixed
    assert {i.data_type for i in model.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_bagnet17_onnxruntime_matches_pytorch(b17, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = b17["model"](torch.from_numpy(x)).numpy()
    with open_backend(b17["out"] / "b17.onnx") as backend:
        got = backend.infer(x)
    assert got.shape == (batch, 26, 26, 10) and got.dtype == np.float32
    assert rel_error(got, want) <= 1e-4


def test_bagnet17_fp16_holds_float16_weights_and_stays_close(b17):
    model = onnx.load(str(b17["out"] / "b17.fp16.onnx"))
    types = [i.data_type for i in model.graph.initializer if len(i.dims) == 4]  # conv kernels
    assert types and all(t == onnx.TensorProto.FLOAT16 for t in types)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = b17["model"](torch.from_numpy(x)).numpy()
    with open_backend(b17["out"] / "b17.fp16.onnx", provider="cpu") as backend:
        assert backend.provider == "CPUExecutionProvider"
        got = backend.infer(x)
    assert got.dtype == np.float32
    assert rel_error(got, want) <= 3e-2


def test_bagnet17_parity_report(b17):
    report = json.loads((b17["out"] / "b17.parity.json").read_text())
    rows = {row["artifact"]: row for row in report["rows"]}
    assert set(rows) == {"b17.onnx", "b17.fp16.onnx"}
    assert report["reference"] == "PyTorch" and report["window"] == [6, 6]
    assert rows["b17.onnx"]["within_tolerance"] is True and rows["b17.onnx"]["max_rel"] <= 1e-4
    assert rows["b17.fp16.onnx"]["max_rel"] <= 3e-2
    for row in rows.values():
        assert row["n"] == 6
        assert 0.0 <= row["certificate_agreement"] <= 1.0
        assert 0.0 <= row["prediction_agreement"] <= 1.0
    assert "cert agree" in b17["output"] and "b17.fp16.onnx" in b17["output"]
    assert visible_files(b17["out"]) == ["b17.fp16.onnx", "b17.manifest.json", "b17.onnx", "b17.parity.json"]


# -- the bundled default, --onnx without torch ----------------------------------------------------

def test_default_model_exports_without_flags(tmp_path):
    from patchguard.models import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_installed():
        pytest.skip("bundled default checkpoint not installed yet")
    result = run_cli(["--out", str(tmp_path), "--no-engine", "--parity-n", "8"])
    assert result.exit_code == 0, result.output
    name = DEFAULT_WEIGHTS.name
    with open_backend(tmp_path / f"{name}.onnx") as backend:
        assert backend.record.input_size == (28, 28)
        assert backend.infer(np.zeros((2, 1, 28, 28), np.float32)).shape[0] == 2
    report = json.loads((tmp_path / f"{name}.parity.json").read_text())
    assert report["rows"][0]["within_tolerance"] is True


@pytest.mark.slow
def test_export_from_onnx_never_imports_torch(small_onnx, tmp_path):
    source = small_onnx
    out = tmp_path / "target"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now fails
        "from patchguard.export.cli import main\n"
        f"main(['--onnx', {str(source)!r}, '--fp16', '--out', {str(out)!r}, '--no-engine',"
        " '--parity-n', '4'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["small.fp16.onnx", "small.manifest.json", "small.parity.json"]
    report = json.loads((out / "small.parity.json").read_text())
    assert report["reference"] == "small.onnx in onnxruntime"
    assert report["rows"][0]["precision"] == "fp16"


# -- errors: one line, exit 1, nothing written ----------------------------------------------------

def test_missing_checkpoint(tmp_path):
    out = tmp_path / "out"
    result = run_cli(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)])
    assert_one_line_error(result, "nope.pt", "does not exist")
    assert visible_files(out) == []


def test_checkpoint_that_does_not_fit_the_arch(tmp_path):
    from patchguard.models import build_model

    record = record_for("smallbagnet")
    checkpoint = save_checkpoint(build_model(record), record, tmp_path / "small.pt")
    out = tmp_path / "out"
    result = run_cli(["--checkpoint", str(checkpoint), "--arch", "bagnet17", "--out", str(out)])
    assert_one_line_error(result, "does not fit bagnet17")
    assert visible_files(out) == []


def test_unknown_arch(tmp_path):
    result = run_cli(["--arch", "resnet50", "--random-init", "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "unknown arch", "bagnet17")


def test_arch_without_checkpoint_needs_random_init(tmp_path):
    result = run_cli(["--arch", "bagnet17", "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "--random-init")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--out", str(blocker / "out")])
    assert_one_line_error(result, "output folder")
    assert blocker.read_text() == "not a folder"


def test_unwritable_output_folder_by_permission(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = run_cli(["--arch", "smallbagnet", "--random-init", "--out", str(folder)])
        assert_one_line_error(result, "not writable")
        assert visible_files(folder) == []
    finally:
        folder.chmod(0o700)


def test_onnx_mode_rejects_torch_flags_and_corrupt_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(run_cli(["--onnx", str(junk), "--arch", "bagnet17"]), "--arch", "do not apply")
    out = tmp_path / "out"
    assert_one_line_error(run_cli(["--onnx", str(junk), "--out", str(out)]), "junk.onnx")
    assert visible_files(out) == []


def test_engine_flag_is_an_error_without_tensorrt(tmp_path):
    if engine_unavailable_reason() is None:
        pytest.skip("this machine can build engines")
    out = tmp_path / "out"
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--engine", "--out", str(out)])
    assert_one_line_error(result, "--engine", "TensorRT")
    assert visible_files(out) == []


def test_no_engine_is_one_line_note(tmp_path):
    if engine_unavailable_reason() is None:
        pytest.skip("this machine can build engines")
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--out", str(tmp_path), "--parity-n", "4"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("no TensorRT engine built")]
    assert len(notes) == 1
    assert visible_files(tmp_path) == ["smallbagnet.manifest.json", "smallbagnet.onnx", "smallbagnet.parity.json"]


def test_class_names_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--class-names", str(names),
                      "--out", str(tmp_path), "--no-engine", "--parity-n", "2"])
    assert result.exit_code == 0, result.output
    with open_backend(tmp_path / "smallbagnet.onnx") as backend:
        assert backend.record.class_names[3] == "class 3"
    names.write_text("a\nb\n")
    assert_one_line_error(run_cli(["--arch", "smallbagnet", "--random-init", "--class-names", str(names),
                                   "--out", str(tmp_path / "x")]), "2 names")


def test_help_lists_every_flag_with_examples():
    result = run_cli(["--help"])
    assert result.exit_code == 0
    for flag in ("--arch", "--checkpoint", "--num-classes", "--input-size", "--class-names", "--fp16",
                 "--int8", "--calib-data", "--calib-size", "--int8-flavor", "--out", "--name",
                 "--max-batch", "--opset", "--engine", "--random-init", "--onnx", "--parity-data",
                 "--parity-n"):
        assert flag in result.output
    assert "Examples:" in result.output


@pytest.mark.slow
def test_help_works_without_torch():
    code = "import sys; sys.modules['torch'] = None\nfrom patchguard.export.cli import main\nmain(['--help'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--fp16" in done.stdout, done.stderr


def test_fresh_export_removes_stale_artifacts_of_the_same_name(tmp_path):
    for stale in ("smallbagnet.plan", "smallbagnet.plan.json", "smallbagnet.int8.onnx"):
        (tmp_path / stale).write_bytes(b"from an earlier model")
    (tmp_path / "other.plan").write_bytes(b"keep")
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--out", str(tmp_path), "--no-engine",
                      "--parity-n", "2"])
    assert result.exit_code == 0, result.output
    assert visible_files(tmp_path) == ["other.plan", "smallbagnet.manifest.json", "smallbagnet.onnx",
                                       "smallbagnet.parity.json"]
    # Each removal is a warning line, not a silent info message.
    for stale in ("smallbagnet.plan", "smallbagnet.plan.json", "smallbagnet.int8.onnx"):
        assert f"warning: removed {tmp_path / stale}" in result.output


@pytest.mark.slow
def test_export_from_onnx_on_a_machine_without_onnxruntime(small_onnx, tmp_path):
    source = small_onnx
    out = tmp_path / "bare"
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n"
        "from patchguard.export.cli import main\n"
        f"main(['--onnx', {str(source)!r}, '--fp16', '--out', {str(out)!r}, '--no-engine'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "locality probe and parity report skipped" in done.stderr
    assert sorted(os.listdir(out)) == ["small.fp16.onnx", "small.manifest.json"]


def test_parity_on_an_image_folder(tmp_path):
    cv2 = pytest.importorskip("cv2")
    images = tmp_path / "images" / "some-class"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(images / f"frame{i}.png"), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = tmp_path / "out"
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--out", str(out), "--no-engine",
                      "--parity-data", str(tmp_path / "images"), "--parity-n", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "smallbagnet.parity.json").read_text())
    assert report["inputs"].startswith("3 images from") and report["rows"][0]["n"] == 3


def test_bad_input_size_is_one_line(tmp_path):
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--input-size", "big", "--out", str(tmp_path)])
    assert_one_line_error(result, "--input-size")
    assert visible_files(tmp_path) == []
