"""Does a candidate model decide and certify like its reference? One set of measures and bars.

Every comparison of two models on the same N inputs goes through here: the
export's parity report (each fp16 / int8 / engine artifact against the PyTorch
model or the fp32 ONNX, :mod:`.parity` and :mod:`.pipeline`) and the INT8
acceptance check on a labelled test set (``benchmarks/int8_agreement.py``).

Measures (:class:`Agreement`), from each model's decisions: the share of inputs
where the predictions are equal, where the certificate verdicts (each model
certifying its own prediction, the deployment question) are equal, and the
share of own predictions each model certifies; with true labels also the
accuracy and the certified accuracy of each. For BagNets the decisions are
robust masking (PatchGuard Algorithm 1) and its certificate (Algorithm 2),
:func:`measure`; a view defense hands in its own (:meth:`Agreement.of`).

Bars (issue 5): the predictions agree on at least :data:`MIN_AGREEMENT` of the
inputs, and the certified share (certified accuracy when labels are given, else
the own-prediction certified share) is at most :data:`MAX_CERTIFIED_DROP`
points lower. The certificate agreement is reported, not judged: a certificate
flips whenever a margin near zero moves by a rounding step, so it sits a few
points below the prediction agreement even for a good INT8 model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..runtime import certify, robust_masking
from ..runtime.errors import PatchGuardError
from ..runtime.geometry import IntOrPair, as_pair

# Issue 5's bars: predictions agree on >= 98% of inputs, the certified share drops <= 2 points.
MIN_AGREEMENT = 0.98
MAX_CERTIFIED_DROP = 2.0


def _as_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise PatchGuardError(f"need one label per input ({n}), got {labels.shape}")
    return labels


@dataclass(frozen=True)
class Agreement:
    """How a candidate's decisions on ``n`` inputs compare with the reference's (shares in [0, 1]).

    ``certified_*``: share of inputs whose own prediction is certified (no labels
    needed; not certified accuracy). The ``accuracy_*`` and ``certified_accuracy_*``
    fields are None unless true labels were given.
    """

    n: int
    prediction_agreement: float
    certificate_agreement: float
    certified_reference: float
    certified_candidate: float
    accuracy_reference: Optional[float] = None
    accuracy_candidate: Optional[float] = None
    certified_accuracy_reference: Optional[float] = None
    certified_accuracy_candidate: Optional[float] = None

    @classmethod
    def of(
        cls,
        predictions: tuple[np.ndarray, np.ndarray],
        certified: tuple[np.ndarray, np.ndarray],
        labels: Optional[np.ndarray] = None,
        certified_true: Optional[tuple[np.ndarray, np.ndarray]] = None,
    ) -> "Agreement":
        """From (reference, candidate) pairs of decisions, each (N,): labels, own-prediction
        certificates and, with ``labels``, the certificates of the true labels."""
        pred_ref, pred_cand = (np.asarray(p) for p in predictions)
        cert_ref, cert_cand = (np.asarray(c, dtype=bool) for c in certified)
        n = len(pred_ref)
        if n == 0:
            raise PatchGuardError("cannot compare two models on zero inputs")
        if any(len(a) != n for a in (pred_cand, cert_ref, cert_cand)):
            raise PatchGuardError("need one decision per input from both models")
        shares = {}
        if labels is not None:
            labels = _as_labels(labels, n)
            if certified_true is None:
                raise PatchGuardError("with labels, give the certificates of the true labels too")
            true_ref, true_cand = (np.asarray(c, dtype=bool) for c in certified_true)
            shares = dict(accuracy_reference=float(np.mean(pred_ref == labels)),
                          accuracy_candidate=float(np.mean(pred_cand == labels)),
                          certified_accuracy_reference=float(np.mean(true_ref)),
                          certified_accuracy_candidate=float(np.mean(true_cand)))
        return cls(n, float(np.mean(pred_ref == pred_cand)), float(np.mean(cert_ref == cert_cand)),
                   float(np.mean(cert_ref)), float(np.mean(cert_cand)), **shares)

    def _certified_shares(self) -> tuple[float, float, bool]:
        """(reference, candidate, labelled): certified accuracies with labels, else own-prediction shares."""
        ref, cand = self.certified_accuracy_reference, self.certified_accuracy_candidate
        if ref is not None and cand is not None:
            return ref, cand, True
        return self.certified_reference, self.certified_candidate, False

    @property
    def certified_drop(self) -> float:
        """Points of percent the candidate certifies fewer: certified accuracy with labels,
        else the own-prediction certified share."""
        ref, cand, _ = self._certified_shares()
        return 100.0 * (ref - cand)

    def passes(self, slack: int = 0) -> bool:
        """Within both bars, allowing ``slack`` inputs of noise on each."""
        share = slack / self.n
        return (self.prediction_agreement >= MIN_AGREEMENT - share
                and self.certified_drop <= MAX_CERTIFIED_DROP + 100.0 * share)

    def shortfall(self, candidate: str, reference: str, slack: int = 0) -> Optional[str]:
        """None within the bars, else one sentence (no final stop) saying what ``candidate`` misses.

        ``slack``: inputs of noise allowed on each bar. On the 16 inputs of a default
        parity report one flipped decision is 6 points, noise rather than evidence,
        so the export allows one; a broken calibration is far beyond it.
        """
        if self.passes(slack):
            return None
        less = f", less {'one' if slack == 1 else slack} of the {self.n} inputs" if slack else ""
        plus = f", plus {'one input' if slack == 1 else f'{slack} inputs'}" if slack else ""
        ref, cand, labelled = self._certified_shares()
        certified = (f"its certified accuracy is {100 * cand:.1f}% against {100 * ref:.1f}%" if labelled else
                     f"certifies its own prediction on {100 * cand:.1f}% of them against {100 * ref:.1f}%")
        return (f"{candidate} agrees with {reference} on {100 * self.prediction_agreement:.1f}% of "
                f"robust-masking predictions (at least {100 * MIN_AGREEMENT:.0f}% needed{less}) and "
                f"{certified} (at most {MAX_CERTIFIED_DROP:g} points lower{plus})")


def measure(
    reference: np.ndarray,
    candidate: np.ndarray,
    window: IntOrPair,
    *,
    labels: Optional[np.ndarray] = None,
    thres: float = 0.0,
    clip: Optional[float] = None,
) -> Agreement:
    """Agreement of two local-logit batches u, (N, H, W, K), under robust masking with ``window``
    (a, b), detection threshold T = ``thres`` and clipping ceiling c_h = ``clip``."""
    reference = np.asarray(reference, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    if reference.ndim != 4 or reference.shape != candidate.shape:
        raise PatchGuardError("need two local-logit batches (N, H, W, K) of one shape, "
                              f"got {reference.shape} and {candidate.shape}")
    window = as_pair(window)

    def decide(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        true = None if labels is None else certify(u, window, thres=thres, clip=clip, labels=labels)
        return robust_masking(u, window, thres=thres, clip=clip)[0], certify(u, window, thres=thres, clip=clip), true

    if labels is not None:
        labels = _as_labels(labels, len(reference))
    pred_ref, cert_ref, true_ref = decide(reference)
    pred_cand, cert_cand, true_cand = decide(candidate)
    certified_true = None if true_ref is None or true_cand is None else (true_ref, true_cand)
    return Agreement.of((pred_ref, pred_cand), (cert_ref, cert_cand), labels, certified_true)
