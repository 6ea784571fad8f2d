"""The shipped DS and crop models end to end: soundness in pixel space through the real model, pg-certify, pg-bench.

The shipped Fashion-MNIST models are exported by the project's exporter and
run by onnxruntime. For each certified test image, a patch is written into
EVERY position of the uint8 image (black, white, random, checkerboard), the
views are rebuilt from the attacked pixels and scored, and the defended
label must not change. The full run (300 certified images per rule) is
``slow``; the quick one attacks a few images with every content at every
position.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _smoothing_fixtures import attacked_images, attacked_logits, changed_views

from patchguard.runtime.datasets import load_fashion_mnist
from patchguard.runtime.preprocess import normalize

pytestmark = pytest.mark.fashion_mnist

# Bundled weights (patchguard.models.WEIGHTS) by defense kind.
SHIPPED = {"ds": "fashion_mnist_ds", "crops": "fashion_mnist_crops"}
# The patch each model is attacked with (model pixels).
PATCH = {"ds": 5, "crops": 5}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(kind, path, onnxruntime backend) of a shipped view model, exported by the project's exporter."""
    pytest.importorskip("torch", reason="exporting the shipped model needs torch (the [export] extra)")
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import WEIGHTS
    from patchguard.runtime.backends import open_backend

    model, record = WEIGHTS[SHIPPED[request.param]].load()
    path = save_onnx(export_onnx(model, record), tmp_path_factory.mktemp("views") / "model.onnx")
    with open_backend(path) as backend:
        yield request.param, path, backend


def attack_certified(backend, p: int, want: int, per_position: int, seed: int = 0) -> dict[str, list[int]]:
    """Attack test images in order until every rule of the model has ``want``
    certified images attacked; per rule: [certified images attacked, attacks, broken]."""
    from patchguard.runtime.smoothing_runners import runners_for

    record = backend.record
    runners = runners_for(record, (p, p), backend.infer)
    keep = next(iter(runners.values())).keep
    images, _ = load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    tally = {name: [0, 0, 0] for name in runners}
    for n in range(len(images)):
        if all(t[0] >= want for t in tally.values()):
            break
        clean = next(iter(runners.values())).logits(normalize(images[n : n + 1], record))
        targets = {}
        for name, runner in runners.items():
            label, certified, _ = runner.decide(clean)
            if certified[0] and tally[name][0] < want:
                targets[name] = int(label[0])
        if not targets:
            continue
        bad, corners = attacked_images(images[n], p, per_position, rng)
        logits = attacked_logits(record, keep, clean[0], bad, corners, p, backend.infer)
        for name, y in targets.items():
            predicted, _, _ = runners[name].decide(logits)
            tally[name][0] += 1
            tally[name][1] += len(bad)
            tally[name][2] += int((predicted != y).sum())
    return tally


def test_views_the_patch_misses_are_bit_identical(shipped) -> None:
    from patchguard.runtime.smoothing_runners import runners_for

    kind, _, backend = shipped
    p = PATCH[kind]
    keep = next(iter(runners_for(backend.record, (p, p), backend.infer).values())).keep
    images, _ = load_fashion_mnist("test")
    bad, corners = attacked_images(images[0], p, 4, np.random.default_rng(1))
    for k in range(0, len(bad), 13):
        i, j = corners[k]
        meets = keep[:, i : i + p, j : j + p].any(axis=(1, 2))
        assert not (changed_views(backend.record, keep, images[0], bad[k]) & ~meets).any()


def test_certified_labels_survive_every_patch_position_quick(shipped) -> None:
    kind, _, backend = shipped
    tally = attack_certified(backend, PATCH[kind], want=3, per_position=2)
    for name, (attacked, attacks, broken) in tally.items():
        assert attacked == 3, f"{name}: only {attacked} certified images found"
        assert broken == 0, f"{name}: {broken} of {attacks} attacks changed a certified label"


@pytest.mark.acceptance
def test_certified_labels_survive_every_patch_position_300_images(shipped) -> None:
    kind, _, backend = shipped
    tally = attack_certified(backend, PATCH[kind], want=300, per_position=1)
    print(f"\n{kind}: " + ", ".join(f"{name}: {a} certified images, {n} attacks, {b} broken"
                                    for name, (a, n, b) in tally.items()))
    for name, (attacked, attacks, broken) in tally.items():
        assert attacked == 300, f"{name}: only {attacked} certified images in the test set"
        assert broken == 0, f"{name}: {broken} of {attacks} attacks changed a certified label"


def test_pg_certify_and_pg_bench_run_the_shipped_model(shipped, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from patchguard.runtime.cli.bench import main as bench_main
    from patchguard.runtime.cli.certify import main as certify_main

    kind, path, _ = shipped
    out = tmp_path / "certify.json"
    result = CliRunner().invoke(certify_main, ["--engine", str(path), "--data", "fashion-mnist", "--limit", "40",
                                               "--patch-size", "2", "5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    rules = ["ds", "mask-ds"] if kind == "ds" else ["crops"]
    assert [(r["rule"], r["patch_size"]) for r in rows] == [(rule, p) for rule in rules for p in (2, 5)]
    assert all(0 <= r["certified"] <= r["accuracy"] <= 1 for r in rows)
    assert all(r["views_per_image"] == (28 if kind == "ds" else 36) for r in rows)
    result = CliRunner().invoke(bench_main, ["--engine", str(path), "--frame", "28x28", "--iterations", "5"])
    assert result.exit_code == 0, result.output
    assert "views generated and scored" in result.output
    assert all(f"{rule} decision + certificate" in result.output for rule in rules)
