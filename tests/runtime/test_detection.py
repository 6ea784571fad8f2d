"""Provable detection (PatchGuard++): agreement with naive loops (ties and the
exact-tau boundary included) and brute-force soundness: a certified map under
any patch gives its label or an alert."""
from __future__ import annotations

import numpy as np
import pytest
from _certify_fixtures import biased_maps, survives
from _feature_fixtures import integer_maps, naive_certify_detection, naive_detect, survives_extremes

from patchguard.runtime import PatchGuardError
from patchguard.runtime.detection import WindowReadout, certify_detection, detect, softmax, softmax_top


def _case(rng: np.random.Generator) -> tuple:
    h, w = (int(v) for v in rng.integers(3, 8, size=2))
    classes = int(rng.integers(1, 5))
    window = (int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1)))
    tau = float(rng.choice([0.0, 0.3, 0.5, 0.7, 0.9]))
    return h, w, classes, window, tau


def test_detection_agrees_with_naive_loops_including_ties() -> None:
    rng = np.random.default_rng(142)
    maps = ties = certified = alerts = 0
    while maps < 1200:
        h, w, classes, window, tau = _case(rng)
        kind = rng.random()
        if kind < 0.4:
            u = integer_maps(rng, 6, h, w, classes, low=0, high=2, bias=1)
        else:
            u, _ = biased_maps(rng, 6, h, w, classes, strength=3.0 if kind < 0.7 else 0.5)
        found = detect(u, window, tau=tau)
        own = certify_detection(u, window, tau=tau)
        y = rng.integers(0, classes, size=u.shape[0])
        given = certify_detection(u, window, tau=tau, labels=y)
        for n in range(u.shape[0]):
            label, alert = naive_detect(u[n], *window, tau)
            assert (found.labels[n], found.alerts[n]) == (label, alert), (n, window, tau)
            assert own[n] == naive_certify_detection(u[n], *window, tau, label)
            assert given[n] == naive_certify_detection(u[n], *window, tau, int(y[n]))
            scores = WindowReadout.of(u[n : n + 1], window).scores
            ties += int(((scores == scores.max(axis=-1, keepdims=True)).sum(axis=-1) > 1).any())
            certified += int(own[n])
            alerts += int(alert)
            maps += 1
    print(f"{maps} maps, {ties} with an exact tie at the top of some window's scores, "
          f"{certified} certified, {alerts} alerts")
    assert ties > 100 and certified > 100 and alerts > 50


def test_exactly_tau_neither_alerts_nor_certifies() -> None:
    """One convention, ``> tau``, in both places."""
    u = np.zeros((1, 4, 4, 2))
    u[0, :, :, 1] = 1.0
    u[0, 0, 0, 0] = 30.0  # the windows off cell (0, 0) predict class 0
    readout = WindowReadout.of(u, (2, 2))
    label = int(readout.labels[0])
    away = readout.predictions[0] != label
    assert away.any()
    tau = float(readout.confidence[0][away].max())
    assert not detect(u, 2, tau=tau).alerts[0]
    assert detect(u, 2, tau=np.nextafter(tau, 0)).alerts[0]
    # Certified detection: the smallest window confidence in the label is the boundary.
    v = np.zeros((1, 4, 4, 2))
    v[0, :, :, 1] = 1.0
    sure = WindowReadout.of(v, (2, 2))
    edge = float(sure.confidence[0].min())
    assert not certify_detection(v, 2, tau=edge)[0]
    assert certify_detection(v, 2, tau=np.nextafter(edge, 0))[0]


def test_bad_tau_is_one_error() -> None:
    for tau in (-0.1, 1.0, "x"):
        with pytest.raises(PatchGuardError, match="tau"):
            detect(np.zeros((1, 3, 3, 2)), 1, tau=tau)  # type: ignore[arg-type]


def test_nan_maps_alert_and_are_never_certified() -> None:
    u = np.ones((2, 4, 4, 2))
    u[1, :, :, 1] += 1
    u[0, 2, 2, 0] = np.inf
    found = detect(u, 1, tau=0.5)
    assert found.labels.tolist() == [-1, 1] and found.alerts.tolist() == [True, False]
    assert certify_detection(u, 1, tau=0.5).tolist() == [False, True]


def test_certified_detection_survives_brute_force() -> None:
    rng = np.random.default_rng(143)
    certified = broken = tried = uncertified = flipped = 0
    while certified < 500:
        tried += 1
        assert tried < 400, f"only {certified} certified cases after {tried} batches"
        h, w, classes, window, tau = _case(rng)
        classes = max(classes, 2)
        u, _ = biased_maps(rng, 8, h, w, classes, strength=4.0)
        verdict = certify_detection(u, window, tau=tau)
        labels = detect(u, window, tau=tau).labels

        for n in np.flatnonzero(verdict):
            y = int(labels[n])

            def label_or_alert(x: np.ndarray, y: int = y, window: tuple = window,
                               tau: float = tau) -> np.ndarray:
                found = detect(x, window, tau=tau)
                return np.where(found.alerts, y, found.labels)

            certified += 1
            if not (survives(u[n], y, *window, label_or_alert, rng)
                    and survives_extremes(u[n], y, *window, label_or_alert)):
                broken += 1
        for n in np.flatnonzero(~verdict)[:1]:
            y = int(labels[n])

            def silent(x: np.ndarray, y: int = y, window: tuple = window, tau: float = tau) -> np.ndarray:
                found = detect(x, window, tau=tau)
                return np.where(found.alerts, y, found.labels)

            uncertified += 1
            flipped += not survives(u[n], y, *window, silent, rng)
    print(f"detection: {certified} certified cases attacked, {broken} broken (wrong label, no "
          f"alert); the same adversary did that to {flipped} of {uncertified} uncertified ones")
    assert broken == 0
    assert flipped > 0


def test_alerts_screened_without_a_softmax_are_the_softmax_alerts() -> None:
    """Windows whose confidence is below tau for sure (C exp(mean - peak) >= 1 / tau) skip
    the softmax; the alerts are exactly those of every window's softmax, over 2-300
    classes, logits from 1e-3 to 1e4, and tau from 0 to 0.99."""
    rng = np.random.default_rng(31)
    screened = computed = alerts = 0
    for trial in range(120):
        classes = int(rng.choice([2, 5, 40, 300]))
        scale = float(10.0 ** rng.uniform(-3, 4))
        u = rng.normal(size=(3, 8, 9, classes)) * scale
        u[:, :, :, int(rng.integers(classes))] += rng.uniform(0, 0.5) * scale
        u[0, 2:5, 3:6, int(rng.integers(classes))] += 8 * scale  # a patch-like blob
        if trial % 5 == 0:
            u[1, 0, 0, 0] = np.inf
        u = u.astype(np.float32) if trial % 2 else u
        window = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        tau = float(rng.choice([0.0, 0.3, 0.8, 0.99]))
        fast = WindowReadout.of(u, window)
        full = WindowReadout.of(u, window)
        _ = full.confidence  # every window's softmax: alerts() then reads it
        got, want = fast.alerts(tau), full.alerts(tau)
        assert np.array_equal(got, want), (trial, classes, scale, tau)
        other = fast.predictions != fast.labels[:, None, None]
        with np.errstate(invalid="ignore", over="ignore"):
            unsure = fast._may_exceed(tau)
        screened += int((other & ~unsure).sum())
        computed += int((other & unsure).sum())
        alerts += int(want.sum())
    print(f"windows predicting another class: {screened} cleared without a softmax, {computed} computed; "
          f"{alerts} alerts")
    assert screened > 100 and computed > 100 and alerts > 50


def test_softmax_rows_sum_to_one_and_rows_with_nan_or_inf_are_no_evidence() -> None:
    z = np.array([[1.0, 2.0, 3.0], [1e300, -1e300, 0.0], [np.nan, 1.0, 0.0], [np.inf, 0.0, 0.0]])
    p = softmax(z)
    assert softmax(z[:1].astype(np.float32)).dtype == np.float64
    assert np.allclose(p[:2].sum(axis=1), 1.0) and p[1].tolist() == [1.0, 0.0, 0.0]
    assert np.allclose(p[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    assert (p[2:] == 0).all()
    top, confidence = softmax_top(np.array([[1.0, 2.0, 3.0]]))
    assert top.tolist() == [2] and np.isclose(confidence[0], p[0, 2])
