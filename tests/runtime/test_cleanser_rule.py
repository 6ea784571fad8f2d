"""Double masking (Algorithm 1) and its certificate (Theorem 1) on small synthetic classifiers.

The classifiers are linear in the pixels, so the worst patch against one
view has a closed form; every certified frame is attacked with it and with
extreme and random contents at every patch position, and the defended label
is recomputed with double masking from scratch."""
from __future__ import annotations

import numpy as np
import pytest

from patchguard.runtime.cleanser import UNSCORED, DoubleMasking, certified, decide, majority, pixel_mask_set


class Linear:
    """logits = x . W + b over flattened pixels: a stand-in classifier with known gradients."""

    def __init__(self, rng, shape, classes, bias=0.0):
        self.w = rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
        self.b = (bias * rng.normal(size=classes)).astype(np.float32)
        self.calls = 0

    def __call__(self, views):
        self.calls += len(views)
        return views.reshape(len(views), -1) @ self.w + self.b


def _frames(rng, model, n, shape, classes):
    """Frames that lean towards a random class (so that some certify)."""
    y = rng.integers(0, classes, size=n)
    direction = model.w[:, y].T.reshape(n, *shape)
    strength = rng.uniform(0.0, 0.1, size=(n, 1, 1, 1))
    return (rng.normal(size=(n, *shape)) + strength * direction).astype(np.float32), y


def _naive_label(table, classes):
    first = [table[i, i] for i in range(len(table))]
    if len(set(first)) == 1:
        return first[0]
    counts = np.bincount(first, minlength=classes)
    y_maj = int(np.argmax(counts))
    for i, label in enumerate(first):
        if label != y_maj and all(table[i, j] == label for j in range(len(table))):
            return label
    return y_maj


@pytest.mark.parametrize("seed", range(4))
def test_batched_runs_agree_with_the_full_table(seed):
    rng = np.random.default_rng(seed)
    shape, classes = (1, 10, 12), 4
    masks = pixel_mask_set(shape[1:], (3, 2), (3, 4))
    model = Linear(rng, shape, classes)
    x, _ = _frames(rng, model, 40, shape, classes)
    runner = DoubleMasking(masks, 0.0, classes, model, max_batch=64)
    quick, quick_tables = runner.run(x, certify=True)
    full, tables = runner.run(x, certify=True, full=True)
    assert (tables != UNSCORED).all()
    for f in range(len(x)):
        assert quick[f].label == full[f].label == _naive_label(tables[f], classes)
        assert quick[f].certified == full[f].certified == bool((tables[f] == quick[f].label).all())
        # Whatever the quick run scored agrees with the full table.
        seen = quick_tables[f] != UNSCORED
        assert (quick_tables[f][seen] == tables[f][seen]).all()
        assert quick[f].second_round == (len(set(np.diagonal(tables[f]))) > 1)
        assert full[f].views == masks.pair_count
        assert quick[f].views == int(seen[np.triu_indices(masks.count)].sum())
    assert any(r.certified for r in quick) and not all(r.certified for r in quick)


def test_decide_reads_the_rules_cases():
    # Case I: unanimous.
    t = np.full((3, 3), 2)
    assert decide(t, 4) == (2, False, None) and certified(t, 2)
    # Case II: mask 1 disagrees and all its two-mask views agree with it.
    t = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert decide(t, 4) == (1, True, 1) and not certified(t, 1)
    # Case III: the disagreer's row is not unanimous: majority (ties: lowest class).
    t = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert decide(t, 4) == (0, True, None)
    assert majority(np.array([3, 1, 3, 1]), 4) == 1
    assert majority(np.array([-1, -1, 2]), 4) == 2


def _attacked_label(model, masks, frame, classes, top, left, content):
    x = frame.copy()
    ph, pw = masks.rows.patch, masks.cols.patch
    x[:, top : top + ph, left : left + pw] = content
    results, _ = DoubleMasking(masks, 0.0, classes, model).run(x[None])
    return results[0].label


@pytest.mark.parametrize("seed", range(3))
def test_certified_frames_survive_every_patch(seed):
    rng = np.random.default_rng(100 + seed)
    shape, classes = (1, 9, 11), 3
    masks = pixel_mask_set(shape[1:], (2, 3), (3, 3))
    model = Linear(rng, shape, classes)
    x, _ = _frames(rng, model, 30, shape, classes)
    results, _ = DoubleMasking(masks, 0.0, classes, model).run(x, certify=True)
    done = 0
    ph, pw = masks.rows.patch, masks.cols.patch
    w = model.w.reshape(*shape, classes)
    for frame, result in zip(x, results):
        if not result.certified:
            continue
        done += 1
        y = result.label
        for top in range(shape[1] - ph + 1):
            for left in range(shape[2] - pw + 1):
                region = w[:, top : top + ph, left : left + pw]
                contents = [np.full((1, ph, pw), 50.0), np.full((1, ph, pw), -50.0),
                            rng.normal(size=(1, ph, pw)) * 20]
                # The best patch for class c against y in a linear model: +-big along W_c - W_y.
                contents += [50.0 * np.sign(region[..., c] - region[..., y]) for c in range(classes) if c != y]
                for content in contents:
                    assert _attacked_label(model, masks, frame, classes, top, left, content) == y
    assert done >= 3


def test_decision_agrees_with_feature_space_double_masking_on_full_tables():
    from patchguard.runtime.double_masking import decide_with_mask

    rng = np.random.default_rng(5)
    for _ in range(300):
        m, classes = int(rng.integers(1, 7)), int(rng.integers(2, 4))
        scores = rng.normal(size=(1, m, m, classes))
        scores = (scores + scores.transpose(0, 2, 1, 3)) / 2  # two-mask views are symmetric
        if rng.random() < 0.5:  # mostly one class, with a few dissenting masks
            scores[..., 0] += 2.0
        table = scores[0].argmax(axis=-1)
        assert decide(table, classes)[0] == decide_with_mask(scores)[0][0]
