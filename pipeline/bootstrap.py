"""Bootstrap intervals of classification metrics, single and paired, in plain numpy.

A resample is a vector of row weights (how many times each row was drawn), so every metric is a
weighted statistic and a thousand resamples are a few matrix products, not a thousand loops.
Rows are resampled **within each class** (stratified by label): a resample keeps the class
counts of the data, so AUROC is defined in every resample of a set that holds both classes, and
the interval measures the noise of the scores, not of the class mix.

Paired: the challenger and the champion are scored on the SAME resamples of the same rows, and
the interval is of their difference per resample. Two models that agree on most rows have a
narrow paired interval even when each one's own interval is wide; that is what makes a small
real difference visible on a test set of a hundred rows.

Percentile intervals: (alpha/2, 1 - alpha/2) quantiles of the resampled values; resamples where
the metric is undefined (a slice without positives, say) are left out and counted.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# weights [B, N] -> the metric in each of the B resamples [B]
Metric = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the data as it is) and its percentile bootstrap interval."""
    point: float
    lower: float
    upper: float
    level: float          # e.g. 0.95
    resamples: int        # resamples in which the metric was defined

    def to_dict(self) -> dict:
        def clean(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None
        return {"point": clean(self.point), "lower": clean(self.lower),
                "upper": clean(self.upper), "level": self.level, "resamples": self.resamples}

    @property
    def defined(self) -> bool:
        return all(math.isfinite(v) for v in (self.point, self.lower, self.upper))

    def text(self, digits: int = 4) -> str:
        """`0.7312 [0.6820, 0.7790]` (nan where undefined)."""
        def fmt(value: float) -> str:
            return f"{value:.{digits}f}" if math.isfinite(value) else "nan"
        return f"{fmt(self.point)} [{fmt(self.lower)}, {fmt(self.upper)}]"


def rng_for(seed: int, name: str = "") -> np.random.Generator:
    """One reproducible stream per (seed, what is being resampled): a slice's resamples do not
    depend on which other slices exist."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def resample_weights(labels: np.ndarray, resamples: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """[resamples, N] draw counts, each class resampled with replacement within itself."""
    labels = np.asarray(labels).reshape(-1)
    weights = np.zeros((resamples, labels.size), dtype=np.float64)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        counts = rng.multinomial(rows.size, np.full(rows.size, 1.0 / rows.size), size=resamples)
        weights[:, rows] = counts
    return weights


def _unit(n: int) -> np.ndarray:
    return np.ones((1, n), dtype=np.float64)


def rate(hits: np.ndarray, rows: np.ndarray | None = None) -> Metric:
    """The weighted share of `hits` (0/1 per row) among `rows` (a boolean mask; all rows when
    None): accuracy, recall (hits = flagged, rows = positives), FPR (rows = negatives)."""
    hits = np.asarray(hits, dtype=np.float64).reshape(-1)
    mask = np.ones_like(hits, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)

    def metric(weights: np.ndarray) -> np.ndarray:
        inside = weights * mask
        total = inside.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, inside @ hits / np.where(total > 0, total, 1), np.nan)
    return metric


def auroc(labels: np.ndarray, scores: np.ndarray, rows: np.ndarray | None = None) -> Metric:
    """Weighted AUROC (ties count one half) of `scores` for label 1 against label 0, among
    `rows`. O(B x N): each positive's place among the sorted negatives is found once, and a
    resample only re-weights the negatives' running sum."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    mask = np.ones(labels.size, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    positives = np.flatnonzero(mask & (labels == 1))
    negatives = np.flatnonzero(mask & (labels == 0))
    order = negatives[np.argsort(scores[negatives], kind="stable")]
    sorted_scores = scores[order]
    below = np.searchsorted(sorted_scores, scores[positives], side="left")
    at_or_below = np.searchsorted(sorted_scores, scores[positives], side="right")

    def metric(weights: np.ndarray) -> np.ndarray:
        if positives.size == 0 or negatives.size == 0:
            return np.full(weights.shape[0], np.nan)
        running = np.concatenate([np.zeros((weights.shape[0], 1)),
                                  np.cumsum(weights[:, order], axis=1)], axis=1)
        wins = running[:, below] + 0.5 * (running[:, at_or_below] - running[:, below])
        positive_weights = weights[:, positives]
        pairs = positive_weights.sum(axis=1) * running[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, (positive_weights * wins).sum(axis=1)
                            / np.where(pairs > 0, pairs, 1), np.nan)
    return metric


def top_k(labels: np.ndarray, probs: np.ndarray, k: int = 1,
          rows: np.ndarray | None = None) -> Metric:
    """Weighted top-k accuracy (ties toward the lower class index, as pipeline.metrics)."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :min(k, probs.shape[1])]
    return rate((top == labels[:, None]).any(axis=1), rows)


def _interval(point: float, values: np.ndarray, level: float) -> Interval:
    values = values[np.isfinite(values)]
    if values.size == 0 or not math.isfinite(point):
        return Interval(point, math.nan, math.nan, level, int(values.size))
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(values, [tail, 1.0 - tail])
    return Interval(point, float(lower), float(upper), level, int(values.size))


def single(metric: Metric, weights: np.ndarray, level: float) -> Interval:
    """One model's metric with its interval."""
    point = float(metric(_unit(weights.shape[1]))[0])
    return _interval(point, metric(weights), level)


def paired(new: Metric, old: Metric, weights: np.ndarray, level: float) -> Interval:
    """The interval of new - old over the same resamples (a paired bootstrap)."""
    unit = _unit(weights.shape[1])
    point = float(new(unit)[0] - old(unit)[0])
    return _interval(point, new(weights) - old(weights), level)
