"""pg-certify through click's CliRunner: summary, JSON, every error case, and the
--model mode on a real exported model (identical numbers to --logits mode)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _certify_fixtures import biased_maps
from click.testing import CliRunner

from patchguard.runtime import certify, robust_masking
from patchguard.runtime.cli.certify import main
from patchguard.runtime.evaluate import EvaluationOptions, evaluate


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert fragment in errors[0], errors[0]


@pytest.fixture()
def maps(tmp_path: Path):
    rng = np.random.default_rng(30)
    u, hot = biased_maps(rng, 40, 10, 9, 4)
    u = u.astype(np.float32)
    np.save(tmp_path / "u.npy", u)
    np.save(tmp_path / "y.npy", hot)
    return tmp_path, u, hot


def test_help_has_examples() -> None:
    result = _run("--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "--model" in result.output


def test_summary_and_json_with_labels(maps) -> None:
    folder, u, hot = maps
    out = folder / "out.json"
    result = _run("--logits", folder / "u.npy", "--labels", folder / "y.npy", "--window", "3x2",
                  "--thres", "0.1", "--json", out)
    assert result.exit_code == 0, result.output
    predictions = robust_masking(u, (3, 2), thres=0.1)[0]
    certified = certify(u, (3, 2), thres=0.1, labels=hot)
    assert f"({int((predictions == hot).sum())}/40)" in result.output
    assert f"({int(certified.sum())}/40)" in result.output
    report = json.loads(out.read_text())
    assert report["window"] == [3, 2] and report["n"] == 40
    assert [row["prediction"] for row in report["images"]] == predictions.tolist()
    assert [row["certified"] for row in report["images"]] == certified.tolist()
    assert report["summary"]["certified"] == int(certified.sum())


def test_deployment_mode_and_other_defenses(maps) -> None:
    folder, u, _ = maps
    for defense in ("mask", "cbn", "vote"):
        out = folder / f"{defense}.json"
        result = _run("--logits", folder / "u.npy", "--window", "2", "--defense", defense, "--json", out)
        assert result.exit_code == 0, result.output
        images = json.loads(out.read_text())["images"]
        assert [row["certified"] for row in images] == certify(u, 2, defense=defense).tolist()
        assert "certified" in result.output and "accuracy" not in result.output


def test_patch_sizes_give_per_image_sizes_and_the_evaluation(maps) -> None:
    folder, u, hot = maps
    out = folder / "px.json"
    result = _run("--logits", folder / "u.npy", "--labels", folder / "y.npy", "--patch-size", "2,5",
                  "--patch-size", "9", "--rf", "5", "--stride", "2", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["window"] == [7, 7]  # ceil((9 + 5 - 1) / 2)
    assert {row["certified_patch_px"] for row in report["images"]} <= {0, 2, 5, 9}
    assert report["evaluation"] == evaluate(u, hot, [2, 5, 9], EvaluationOptions(receptive_field=5, stride=2))


@pytest.mark.parametrize("args, fragment", [
    (["--window", "3"], "exactly one of --logits"),
    (["--logits", "{d}/missing.npy", "--window", "3"], "does not exist"),
    (["--logits", "{d}/corrupt.npy", "--window", "3"], "cannot read"),
    (["--logits", "{d}/flat.npy", "--window", "3"], "(B, H, W, C)"),
    (["--logits", "{d}/u.npy", "--labels", "{d}/short.npy", "--window", "3"], "expected 40 labels"),
    (["--logits", "{d}/u.npy", "--window", "11"], "larger than the 10x9 map"),
    (["--logits", "{d}/u.npy", "--window", "3x10"], "larger than the 10x9 map"),
    (["--logits", "{d}/u.npy", "--window", "3q"], "window must look like"),
    (["--logits", "{d}/u.npy"], "give --window"),
    (["--logits", "{d}/u.npy", "--patch-size", "5", "--rf", "5"], "give --window"),
    (["--logits", "{d}/u.npy", "--window", "3", "--patch-size", "5", "--rf", "5", "--stride", "2"],
     "not both"),
    (["--logits", "{d}/u.npy", "--window", "3", "--thres", "1.5"], "thres"),
    (["--logits", "{d}/u.npy", "--window", "3", "--data", "fashion-mnist"], "--model mode"),
    (["--engine", "{d}/model.onnx", "--data", "fashion-mnist", "--window", "3"], "--logits mode"),
    (["--engine", "{d}/model.onnx", "--patch-size", "3"], "needs --data"),
])
def test_errors_are_one_line(maps, args, fragment) -> None:
    folder, _, _ = maps
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(folder / "flat.npy", np.zeros((4, 5)))
    np.save(folder / "short.npy", np.zeros(39, dtype=int))
    result = _run(*[a.format(d=folder) for a in args])
    _one_line_error(result, fragment)
    assert not list(folder.glob("*.json"))


@pytest.mark.fashion_mnist
def test_engine_mode_matches_logits_mode(small_onnx: Path, tmp_path: Path) -> None:
    """A real exported model on real Fashion-MNIST: the report, the saved logits
    and --logits mode on those logits all give the same numbers."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    model = small_onnx
    out, logits, plot = tmp_path / "report.json", tmp_path / "u.npy", tmp_path / "plot.png"
    result = _run("--engine", model, "--data", "fashion-mnist", "--limit", "64", "--patch-size", "1,3",
                  "--json", out, "--save-logits", logits, "--plot", plot)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 64 and [r["patch_size"] for r in report["results"]] == [1, 3]
    assert set(report["results"][0]["defenses"]) == {"mask", "mask_paper", "cbn", "vote", "double"}
    assert [d["tau"] for d in report["results"][0]["detection"]] == [0.5, 0.7, 0.9]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    u, y = np.load(logits), np.load(tmp_path / "u.labels.npy")
    assert u.shape[0] == 64 and y.shape == (64,)
    again = tmp_path / "again.json"
    result = _run("--logits", logits, "--labels", tmp_path / "u.labels.npy", "--patch-size", "1,3",
                  "--rf", "5", "--stride", "1", "--json", again)
    assert result.exit_code == 0, result.output
    evaluation = json.loads(again.read_text())["evaluation"]
    assert {k: report[k] for k in ("n", "undefended_accuracy", "results")} == evaluation
    # A patch whose window cannot fit the model's map is refused before inference.
    too_big = _run("--engine", model, "--data", "fashion-mnist", "--patch-size", "40",
                   "--json", tmp_path / "none.json")
    _one_line_error(too_big, "larger than the")
    assert "inference" not in too_big.output
    assert not (tmp_path / "none.json").exists()


@pytest.mark.fashion_mnist
def test_a_numpy_table_gives_the_fashion_mnist_report(small_onnx: Path, tmp_path: Path) -> None:
    """--data set.npz / set.npy: the same images, the same report (bar the data's name)."""
    pytest.importorskip("onnxruntime")
    from patchguard.runtime.datasets import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    np.savez(tmp_path / "set.npz", images=images[:50], labels=labels[:50])
    reports = []
    for data in ("fashion-mnist", tmp_path / "set.npz"):
        result = _run("--model", small_onnx, "--data", data, "--limit", "50", "--patch-size", "3",
                      "--json", tmp_path / "r.json")
        assert result.exit_code == 0, result.output
        reports.append({k: v for k, v in json.loads((tmp_path / "r.json").read_text()).items()
                        if k not in ("data", "split")})
    assert reports[0] == reports[1] and reports[0]["n"] == 50
    _one_line_error(_run("--model", small_onnx, "--data", tmp_path / "none.npz", "--patch-size", "3"),
                    "no such file")


def test_double_masking_top_k_and_detection_options(maps) -> None:
    folder, u, hot = maps
    out = folder / "double.json"
    result = _run("--logits", folder / "u.npy", "--labels", folder / "y.npy", "--window", "2",
                  "--defense", "double", "--masks-per-axis", "3", "--json", out)
    assert result.exit_code == 0, result.output
    from patchguard.runtime import predict

    report = json.loads(out.read_text())
    assert report["masks_per_axis"] == 3
    expected = certify(u, 2, defense="double", masks_per_axis=3, labels=hot)
    assert [row["certified"] for row in report["images"]] == expected.tolist()
    assert [row["prediction"] for row in report["images"]] == predict(
        u, 2, defense="double", masks_per_axis=3).tolist()
    top = folder / "top.json"
    result = _run("--logits", folder / "u.npy", "--labels", folder / "y.npy", "--patch-size", "2",
                  "--rf", "1", "--stride", "1", "--top-k", "2", "--tau", "0.6,0.8", "--json", top)
    assert result.exit_code == 0, result.output
    assert "top-2 certified accuracy" in result.output
    report = json.loads(top.read_text())
    expected = certify(u, 2, top_k=2, labels=hot)
    assert [row["top2_certified"] for row in report["images"]] == expected.tolist()
    row = report["evaluation"]["results"][0]
    assert row["defenses"]["mask_top2"]["certified"] == pytest.approx(expected.mean())
    assert [d["tau"] for d in row["detection"]] == [0.6, 0.8]
    _one_line_error(_run("--logits", folder / "u.npy", "--window", "2", "--defense", "vote",
                         "--top-k", "2"), "--top-k applies")
    _one_line_error(_run("--logits", folder / "u.npy", "--window", "2", "--tau", "x"), "--tau")


@pytest.mark.parametrize("flag", ["--model", "--engine"])
def test_model_flag_and_its_engine_alias_are_one_option(maps, flag: str) -> None:
    folder, _, _ = maps
    result = _run("--logits", folder / "u.npy", flag, folder / "model.onnx")
    _one_line_error(result, "give exactly one of --logits X.npy or --model MODEL")
