"""The one set of agreement measures and bars (export/agreement.py) that the parity gate and
the INT8 acceptance check share."""
from __future__ import annotations

import numpy as np
import pytest

from patchguard.export.agreement import MAX_CERTIFIED_DROP, MIN_AGREEMENT, Agreement, measure
from patchguard.export.parity import compare_maps
from patchguard.export.pipeline import parity_drift
from patchguard.runtime import certify, robust_masking
from patchguard.runtime.errors import PatchGuardError


def test_measures_follow_the_definitions() -> None:
    """(Was tests/calibration/test_int8.py::test_agreement_report_is_consistent.)"""
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(40, 8, 8, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 40)
    same = measure(fp32, fp32.copy(), 3, labels=labels)
    assert same.prediction_agreement == same.certificate_agreement == 1.0
    assert same.certified_drop == 0.0 and same.shortfall("int8", "fp32") is None

    noisy = fp32 + rng.normal(scale=0.8, size=fp32.shape).astype(np.float32)
    agreement = measure(fp32, noisy, 3, labels=labels)
    pred_a, _ = robust_masking(fp32, 3)
    pred_b, _ = robust_masking(noisy, 3)
    assert agreement.prediction_agreement == pytest.approx(np.mean(pred_a == pred_b))
    assert agreement.accuracy_reference == pytest.approx(np.mean(pred_a == labels))
    cert_a = certify(fp32, 3, labels=labels)
    cert_b = certify(noisy, 3, labels=labels)
    assert agreement.certified_drop == pytest.approx(100 * (cert_a.mean() - cert_b.mean()))
    assert agreement.certified_reference == pytest.approx(certify(fp32, 3).mean())  # own predictions
    bad = agreement.prediction_agreement < MIN_AGREEMENT or agreement.certified_drop > MAX_CERTIFIED_DROP
    assert bad, agreement  # this much noise must miss a bar
    line = agreement.shortfall("int8", "fp32")
    assert line is not None and "certified accuracy" in line and "\n" not in line
    with pytest.raises(PatchGuardError):
        measure(fp32, fp32[:5], 3)
    with pytest.raises(PatchGuardError, match="one label per input"):
        measure(fp32, fp32, 3, labels=labels[:5])


def test_slack_allows_one_input_each_way() -> None:
    """The export's gate allows one input of noise; the acceptance check none."""
    one_flip = Agreement(16, 15 / 16, 1.0, 0.5, 0.5)  # 93.75% agreement: one input of 16
    assert one_flip.shortfall("a.int8.onnx", "ref", slack=1) is None
    line = one_flip.shortfall("a.int8.onnx", "ref")
    assert line is not None and line.startswith("a.int8.onnx agrees with ref on 93.8% of robust-masking")
    two_fewer = Agreement(16, 1.0, 1.0, 0.5, 0.375)  # 12.5 points fewer certified: two inputs
    line = two_fewer.shortfall("a.int8.onnx", "ref", slack=1)
    assert line is not None and "certifies its own prediction on 37.5% of them against 50.0%" in line
    assert "less one of the 16 inputs" in line and "points lower, plus one input" in line


def test_parity_rows_carry_the_measures_and_the_gate_reads_them() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(16, 6, 6, 3)).astype(np.float32)
    candidate = reference.copy()
    candidate[:4] = np.roll(reference[:4], 1, axis=-1)  # classes shifted: a quarter decided otherwise
    row = compare_maps("m.int8.onnx", "int8", "onnxruntime", reference, candidate, 2, None)
    assert row.agreement == measure(reference, candidate, 2)
    exact = compare_maps("m.onnx", "fp32", "onnxruntime", reference, reference, 2, 1e-4)
    assert exact.within_tolerance and exact.prediction_agreement == 1.0
    assert row.prediction_agreement == 0.75
    drift = parity_drift([exact, row], "the fp32 ONNX")
    assert len(drift) == 1 and drift[0].startswith("m.int8.onnx agrees with the fp32 ONNX on 75.0%")
    # fp32 rows are judged by their tolerance, never by the decision bars.
    assert parity_drift([compare_maps("m.onnx", "fp32", "x", reference, candidate, 2, None)]) == []
