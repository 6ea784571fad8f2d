"""Soundness of PatchCleanser's certificate through the real exported model.

Certified Fashion-MNIST test images are attacked in pixel space: a 5x5
patch of extreme (white, black, checkerboard), random and PGD-optimised
contents at EVERY position; the defended label is recomputed with double
masking from the attacked image through the exported ONNX model. A single
changed label would be a false certificate.

The quick test attacks a few images; the slow one the issue's 300
(``PATCHGUARD_ATTACK_IMAGES`` overrides the count, ``PATCHGUARD_ATTACK_START``
skips that many certified images, so shards can run side by side;
``PATCHGUARD_ATTACK_MODEL`` attacks an already exported ONNX file of the
bundled model, e.g. its INT8 artifact, instead of a fresh fp32 export). Every
position gets an extreme content (white, black and checkerboard in turn), a
random one and the image's PGD-optimised one.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from _cleanser_fixtures import attacked_labels, certified_test_images, export_cleanser, pgd_patch

from patchguard.runtime.backends import open_backend
from patchguard.runtime.views import view_runner

PATCH = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from patchguard.models import WEIGHTS

    given = os.environ.get("PATCHGUARD_ATTACK_MODEL")
    path = given or export_cleanser(tmp_path_factory.mktemp("attack"))
    model, _ = WEIGHTS["fashion_mnist_cleanser"].load()
    with open_backend(path, threads=1) as backend:
        yield backend, model


def _contents(rng, model, record, pixels, label, masks):
    checker = (np.indices((PATCH, PATCH)).sum(axis=0) % 2).astype(np.float32)
    white, black = np.ones((PATCH, PATCH), np.float32), np.zeros((PATCH, PATCH), np.float32)
    return {
        "extreme": [white, black, checker],
        "random": [rng.uniform(0, 1, (PATCH, PATCH)).astype(np.float32) for _ in range(7)],
        "pgd": pgd_patch(model, record, pixels, label, PATCH, masks, seed=int(rng.integers(1 << 30))),
    }


def _attack(setup, count: int, start: int = 0, kinds=("extreme", "random", "pgd")) -> tuple[int, int]:
    backend, model = setup
    record = backend.record
    runner = view_runner(record, (PATCH, PATCH), backend.infer, backend.max_batch)
    pixels, labels, index = certified_test_images(runner, record, start + count, limit=10000)
    pixels, labels, index = pixels[start:], labels[start:], index[start:]
    assert len(index) == count
    rng = np.random.default_rng(0)
    placements = changed = 0
    for image, label in zip(pixels, labels):
        contents = _contents(rng, model, record, image, label, runner.masks)
        for kind in kinds:
            got = attacked_labels(runner, record, image, contents[kind])
            assert len(got) == (28 - PATCH + 1) ** 2
            placements += len(got)
            changed += int((got != label).sum())
    return placements, changed


@pytest.mark.fashion_mnist
def test_certified_images_keep_their_label_under_every_patch(setup):
    placements, changed = _attack(setup, 2)
    assert placements == 2 * 3 * 576 and changed == 0


@pytest.mark.acceptance
@pytest.mark.fashion_mnist
def test_300_certified_images_under_extreme_random_and_pgd_patches(setup):
    count = int(os.environ.get("PATCHGUARD_ATTACK_IMAGES", "300"))
    start = int(os.environ.get("PATCHGUARD_ATTACK_START", "0"))
    placements, changed = _attack(setup, count, start)
    print(f"certified images {start}..{start + count - 1}: {placements} attacked placements, "
          f"{changed} changed labels")
    assert changed == 0
