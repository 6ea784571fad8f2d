"""DS, Mask-DS and crop voting as view runners: views, deltas, windows, and
run() agreeing with the decision from every view's logits."""
from __future__ import annotations

import numpy as np
import pytest

from patchguard.runtime.ablation import band_keep, crop_keep, frame_views
from patchguard.runtime.defenses import certify
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.metadata import ModelRecord
from patchguard.runtime.smoothing import band_confidences, crop_delta, ds_counts, ds_margin, ds_votes
from patchguard.runtime.smoothing_runners import MaskDSRunner, VoteRunner
from patchguard.runtime.view_evaluate import sibling_rules
from patchguard.runtime.views import ViewDefense, view_runner

DEFENSES = {
    "ds": ViewDefense(kind="ds", band=6, theta=0.3, encoding="x,1-x"),
    "mask-ds": ViewDefense(kind="mask-ds", band=6, theta=0.3, encoding="x,1-x"),
    "crops": ViewDefense(kind="crops", crop=10, crop_stride=6, theta=0.2, encoding="x,1-x"),
}


def record_of(kind: str) -> ModelRecord:
    return ModelRecord(arch="cnn", num_classes=4, input_size=(28, 28), receptive_field=0, stride=0,
                       mean=(0.3,), std=(0.4,), in_channels=1, defense=DEFENSES[kind])


class LinearScorer:
    """A stand-in classifier: fixed random linear logits of the view's pixels,
    the same for a view whatever batch it comes in (counts its calls)."""

    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).normal(0, 0.05, (2 * 28 * 28, 4)).astype(np.float32)
        self.views = 0

    def __call__(self, views: np.ndarray) -> np.ndarray:
        self.views += len(views)
        return views.reshape(len(views), -1) @ self.weights


@pytest.mark.parametrize("kind", sorted(DEFENSES))
def test_run_agrees_with_the_decision_from_every_views_logits(kind: str) -> None:
    record, score = record_of(kind), LinearScorer()
    runner = view_runner(record, (3, 5), score)
    assert type(runner) is (MaskDSRunner if kind == "mask-ds" else VoteRunner)
    keep = crop_keep((28, 28), 10, 6) if kind == "crops" else band_keep((28, 28), 6)
    x = np.random.default_rng(1).normal(0, 1, (7, 1, 28, 28)).astype(np.float32)
    views = runner.all_views(x)
    assert views.shape == (7 * len(keep), 2, 28, 28) and runner.views_per_frame == len(keep)
    assert np.array_equal(views, frame_views(x, keep, record.mean, record.std))
    logits = score(views).reshape(7, len(keep), 4)
    labels, certified = runner.from_logits(logits)
    before = score.views
    results = runner.run(x, certify=True)
    assert score.views - before == 7 * len(keep)  # every view once, in one pass
    assert [r.label for r in results] == labels.tolist()
    assert [r.certified for r in results] == certified.tolist()
    assert all(r.views == len(keep) for r in results)
    assert all(r.certified is None for r in runner.run(x))
    truth = np.arange(7) % 4
    by_label = runner.run(x, labels=truth)
    if kind == "mask-ds":
        expect = certify(band_confidences(logits, 0.3), runner.window, labels=truth, wrap=True)
    else:
        counts = ds_counts(ds_votes(logits, record.defense.theta), 4)
        expect = ds_margin(counts, truth) >= runner.delta
    assert [r.certified for r in by_label] == expect.tolist()


def test_the_patch_footprint_sets_delta_and_window_per_axis() -> None:
    score = LinearScorer()
    # Bands only see the patch's width: a 3 (rows) x 5 (columns) footprint meets 5 + 6 - 1 bands.
    assert view_runner(record_of("ds"), (3, 5), score).delta == 10
    assert view_runner(record_of("ds"), (28, 1), score).delta == 6
    assert view_runner(record_of("mask-ds"), (3, 5), score).window == (1, 10)
    assert view_runner(record_of("ds"), (3, 25), score).delta == 28   # never more than the bands
    crops = view_runner(record_of("crops"), (3, 5), score)
    assert crops.delta == crop_delta((28, 28), 10, 6, (3, 5))


def test_band_models_report_ds_and_mask_ds_side_by_side() -> None:
    assert [r.defense.kind for r in sibling_rules(record_of("ds"))] == ["ds", "mask-ds"]
    assert [r.defense.kind for r in sibling_rules(record_of("mask-ds"))] == ["mask-ds", "ds"]
    assert [r.defense.kind for r in sibling_rules(record_of("crops"))] == ["crops"]


def test_view_records_need_the_encoding_and_a_fitting_band() -> None:
    with pytest.raises(PatchGuardError, match="encoding"):
        ViewDefense(kind="crops", crop=8, crop_stride=4, theta=0.0)
    record = record_of("ds").replace(defense=ViewDefense(kind="ds", band=40, theta=0.0, encoding="x,1-x"))
    with pytest.raises(PatchGuardError, match="band"):
        view_runner(record, (2, 2), LinearScorer())
    data = record_of("crops").to_dict()
    assert data["defense"] == {"kind": "crops", "crop": 10, "crop_stride": 6, "theta": 0.2, "encoding": "x,1-x"}
    assert ModelRecord.from_dict(data).defense == DEFENSES["crops"]
