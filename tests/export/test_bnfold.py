"""BatchNormalization folded into the convolutions: no BN in any exported graph, parity unchanged.

The graph with BatchNormalization is a real torch export of a BagNet whose BN
statistics are made non-trivial, written by torch's TorchScript exporter in
"preserve" mode (which keeps BN as a node); our exporters and pg-export must
hand on no BatchNormalization in fp32, fp16 or int8, with the same outputs.
"""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from _export_fixtures import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from patchguard.export.bnfold import batchnorm_count, fold_batchnorm
from patchguard.export.onnxfile import save_onnx, set_record
from patchguard.models import build_model, record_for


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def graph_with_batchnorm(arch="smallbagnet", **overrides):
    """A real BagNet (BN statistics randomised) exported with its BatchNormalization nodes kept."""
    record = record_for(arch, **overrides)
    torch.manual_seed(3)
    model = build_model(record).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.3, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    example = torch.randn(2, record.in_channels, *record.input_size)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it is the one that keeps BN
        torch.onnx.export(model, (example,), buffer, input_names=["input"], output_names=["local_logits"],
                          dynamic_axes={"input": {0: "batch"}, "local_logits": {0: "batch"}},
                          dynamo=False, opset_version=18, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
    proto = onnx.load_from_string(buffer.getvalue())
    return set_record(proto, record), record


@pytest.fixture(scope="module")
def bn_small(tmp_path_factory):
    proto, record = graph_with_batchnorm()
    assert batchnorm_count(proto) == 4  # the fixture really has BN to fold
    path = save_onnx(proto, tmp_path_factory.mktemp("bn") / "bnsmall.onnx")
    return path, record


def test_folding_removes_every_bn_and_keeps_the_outputs(bn_small):
    path, _ = bn_small
    original = onnx.load(str(path))
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    want = run(original, x)
    folded = fold_batchnorm(onnx.load(str(path)))
    onnx.checker.check_model(folded)
    assert batchnorm_count(folded) == 0
    got = run(folded, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert list(folded.metadata_props) == list(original.metadata_props)
    assert [o.name for o in folded.graph.output] == [o.name for o in original.graph.output]
    assert len(folded.graph.node) == len(original.graph.node) - 4
    # The BN statistics are gone from the file, not left behind unused.
    assert len(folded.graph.initializer) < len(original.graph.initializer)


def test_fp16_folding_keeps_fp16_weights():
    from patchguard.export.fp16 import to_fp16

    proto, _ = graph_with_batchnorm()
    half = to_fp16(proto)
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    want = run(half, x)
    folded = fold_batchnorm(half)
    assert batchnorm_count(folded) == 0
    assert all(init.data_type == onnx.TensorProto.FLOAT16 for init in folded.graph.initializer
               if init.name.endswith(".bnfold.weight"))
    assert np.abs(run(folded, x) - want).max() <= 2e-3 * np.abs(want).max()


def test_bn_that_is_not_affine_or_not_alone_stays():
    helper = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    stats = [onnx.numpy_helper.from_array(v.astype(np.float32), n)
             for v, n in ((np.ones(2), "g"), (np.zeros(2), "b"), (np.zeros(2), "m"), (np.ones(2), "v"))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
        helper.make_node("Relu", ["c"], ["z"], name="also_reads_c"),  # c has a second reader
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [w, *stats])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert batchnorm_count(fold_batchnorm(model)) == 1  # folding would change z


def test_pytorch_export_hands_on_no_batchnorm(tmp_path):
    result = run_cli(["--arch", "smallbagnet", "--random-init", "--fp16", "--int8", "--int8-flavor", "tensorrt",
                      "--no-engine", "--allow-parity-drift", "--out", str(tmp_path), "--parity-n", "8"])
    assert result.exit_code == 0, result.output
    for name in ("smallbagnet.onnx", "smallbagnet.fp16.onnx", "smallbagnet.int8.onnx"):
        assert batchnorm_count(onnx.load(str(tmp_path / name))) == 0, name


def test_pg_export_from_an_onnx_with_batchnorm(bn_small, tmp_path):
    path, _ = bn_small
    out = tmp_path / "out"
    result = run_cli(["--onnx", str(path), "--fp16", "--int8", "--int8-flavor", "tensorrt", "--no-engine",
                      "--allow-parity-drift", "--out", str(out), "--parity-n", "16"])
    assert result.exit_code == 0, result.output
    for name in ("bnsmall.fp16.onnx", "bnsmall.int8.onnx"):
        assert batchnorm_count(onnx.load(str(out / name))) == 0, name
    # Parity against the unfolded fp32 graph in onnxruntime is what it always was.
    rows = {row["artifact"]: row for row in json.loads((out / "bnsmall.parity.json").read_text())["rows"]}
    assert rows["bnsmall.fp16.onnx"]["within_tolerance"] is True
    assert rows["bnsmall.int8.onnx"]["prediction_agreement"] >= 0.9


def test_conv_with_bias_in_an_old_style_graph():
    # Initializers also listed as graph inputs (IR < 4 style), a biased, grouped Conv:
    # folded exactly, the image input kept, the folded-away statistics' input entries gone.
    helper = onnx.helper
    rng = np.random.default_rng(5)
    arrays = {"w": rng.standard_normal((4, 2, 3, 3)), "cb": rng.standard_normal(4),
              "g": rng.uniform(0.5, 1.5, 4), "b": rng.standard_normal(4),
              "m": rng.standard_normal(4), "v": rng.uniform(0.2, 2.0, 4)}
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], name="conv", group=2),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn", epsilon=1e-3)]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])]
    inputs += [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(a.shape)) for n, a in arrays.items()]
    output = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 4, 4])
    graph = helper.make_graph(nodes, "g", inputs, [output],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = run(model, x)
    folded = fold_batchnorm(model)
    onnx.checker.check_model(folded)
    assert batchnorm_count(folded) == 0
    assert [v.name for v in folded.graph.input] == ["x"]
    assert np.abs(run(folded, x) - want).max() <= 1e-5 * np.abs(want).max()
