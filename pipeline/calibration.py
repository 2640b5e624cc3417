"""Temperature scaling and calibration error, in plain numpy.

Temperature scaling divides the model's logits by one number T fitted on validation (the T that
minimises the negative log-likelihood): T > 1 softens an over-confident model, T < 1 sharpens
an under-confident one. It never changes which class ranks first, so AUROC, top-k and the
ranking of a review queue stay exactly as they were; only the probabilities move.

It works on probabilities as well as on logits: log p = logits - logsumexp(logits), and the
shift cancels in the softmax, so softmax(log p / T) = softmax(logits / T). The served model
(pipeline/serving.py) applies it that way to what the network returns.

Calibration error: `reliability_bins` groups rows into equal-width bins of confidence (binary:
the positive class's probability against the share of positives, the reliability plot's axes;
seven classes: the top class's probability against top-1 accuracy); the expected calibration
error (ECE) is the row-weighted mean gap between confidence and frequency over the bins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 10
# T is searched in [1/20, 20] on a log scale: beyond that the fit is chasing a handful of rows.
LOG_T_RANGE = (math.log(0.05), math.log(20.0))
# Probabilities are floored here before the log: a saturated float32 softmax can hold exact 0s.
PROB_FLOOR = 1e-12
MIN_FIT_ROWS = 10


@dataclass(frozen=True)
class Temperature:
    value: float
    fitted: bool
    reason: str         # how it was chosen, e.g. "fitted on 90 val rows" or why it is 1
    nll_before: float   # on the rows it was fitted on
    nll_after: float

    def to_dict(self) -> dict:
        def clean(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None
        return {"temperature": self.value, "fitted": self.fitted, "reason": self.reason,
                "val_nll_before": clean(self.nll_before), "val_nll_after": clean(self.nll_after)}


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, 1.0))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities the logits / T would have given."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0 or temperature == 1.0:
        return probs.copy()
    scaled = log_probs(probs) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(labels: np.ndarray, probs: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(log p / T)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        return math.nan
    scaled = log_probs(probs) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(labels.size), labels]))


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> Temperature:
    """The T in [0.05, 20] minimising val NLL (golden-section search on log T; the NLL is convex
    in 1/T). T = 1 with the reason when val cannot support a fit: fewer than MIN_FIT_ROWS rows,
    or one class only (the NLL then falls forever as the model grows more confident)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    before = nll(labels, probs)
    if labels.size < MIN_FIT_ROWS:
        return Temperature(1.0, False, f"not fitted: {labels.size} val rows, fewer than "
                           f"{MIN_FIT_ROWS}", before, before)
    if np.unique(labels).size < 2:
        return Temperature(1.0, False, "not fitted: val holds one class", before, before)
    low, high = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(labels, probs, math.exp(a)), nll(labels, probs, math.exp(b))
    for _ in range(80):  # the bracket shrinks 0.618x a step: far below 1e-6 in log T
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(labels, probs, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(labels, probs, math.exp(b))
    value = math.exp((low + high) / 2)
    after = nll(labels, probs, value)
    if not after <= before:  # never worse than leaving the model alone
        return Temperature(1.0, False, "not fitted: no temperature lowers val NLL", before,
                           before)
    edge = min(abs(math.log(value) - end) for end in LOG_T_RANGE) < 1e-3
    note = " (at the edge of the search range)" if edge else ""
    return Temperature(value, True, f"fitted on {labels.size} val rows{note}", before, after)


def confidence_and_hit(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a reliability diagram plots: binary, P(class 1) vs label == 1; more classes, the
    top class's probability vs a correct top-1."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return probs[:, 1], labels == 1
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS
                     ) -> list[dict]:
    """Non-empty equal-width bins: {bin, mean_confidence, observed_frequency, count}."""
    confidence, hit = confidence_and_hit(labels, probs)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append({"bin": b, "mean_confidence": float(confidence[inside].mean()),
                         "observed_frequency": float(hit[inside].mean()),
                         "count": int(inside.sum())})
    return rows


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error over the reliability bins; NaN with no rows."""
    rows = reliability_bins(labels, probs, bins)
    total = sum(r["count"] for r in rows)
    if not total:
        return math.nan
    return float(sum(r["count"] * abs(r["mean_confidence"] - r["observed_frequency"])
                     for r in rows) / total)
