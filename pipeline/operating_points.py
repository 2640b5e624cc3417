"""Operating points of a binary moderation model: the threshold at a false-positive rate.

What a moderation team runs is a threshold, set by how many benign posts it may remove: at a
false-positive rate f, the threshold is the lowest one whose FPR on VAL is at most f (so it
flags as much harmful content as that budget allows), and it is then applied unchanged to test,
where recall and FPR are measured with bootstrap intervals (pipeline/bootstrap.py, resampled
within each class). A row is flagged when P(positive) >= threshold; the served model carries
the primary target's threshold and returns that flag as its `decision` column.

Pure numpy: the serving process imports `flags` without the model stack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline import bootstrap


def fpr_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest score threshold whose FPR on these rows is at most `target`; None when they
    hold no negatives. Candidates are the rows' own scores (flag when score >= threshold); when
    even the highest score would flag too many negatives, it is the next float above every
    negative, which flags only rows scoring above all of them."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    negatives = np.sort(scores[labels == 0])[::-1]
    if negatives.size == 0:
        return None
    allowed = int(math.floor(target * negatives.size + 1e-9))  # false positives allowed
    if allowed >= negatives.size:
        return float(scores.min())
    cutoff = negatives[allowed]  # flagging this score or below takes one negative too many
    above = scores[scores > cutoff]
    return float(above.min()) if above.size else float(np.nextafter(cutoff, np.inf))


def flags(positive_probs: np.ndarray, threshold: float) -> np.ndarray:
    """1 where P(positive) >= threshold, else 0 (int64)."""
    return (np.asarray(positive_probs, dtype=np.float64) >= threshold).astype(np.int64)


def _rates(labels: np.ndarray, flagged: np.ndarray) -> dict:
    positives, negatives = labels == 1, labels == 0
    tp = int((flagged & positives).sum())
    fp = int((flagged & negatives).sum())
    return {"recall": tp / positives.sum() if positives.any() else math.nan,
            "fpr": fp / negatives.sum() if negatives.any() else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "flagged_share": float(flagged.mean()) if flagged.size else math.nan,
            "tp": tp, "fp": fp, "fn": int(positives.sum()) - tp, "tn": int(negatives.sum()) - fp}


def operating_point(target: float, val_labels, val_scores, test_labels, test_scores, *,
                    resamples: int, alpha: float, seed: int) -> dict:
    """One target: its val-chosen threshold, val rates, and test rates with intervals of test
    recall and FPR. `threshold` is None (and nothing else is measured) when val has no
    negatives to set it on."""
    val_labels = np.asarray(val_labels).reshape(-1)
    test_labels = np.asarray(test_labels).reshape(-1)
    threshold = fpr_threshold(val_labels, val_scores, target)
    point: dict = {"fpr_target": target, "threshold": threshold}
    if threshold is None:
        return point | {"reason": "val holds no negatives: no threshold can be set"}
    val_flags = flags(val_scores, threshold).astype(bool)
    test_flags = flags(test_scores, threshold).astype(bool)
    point["val"] = _rates(val_labels, val_flags)
    test = _rates(test_labels, test_flags)
    if test_labels.size:
        weights = bootstrap.resample_weights(test_labels, resamples,
                                             bootstrap.rng_for(seed, f"operating:{target}"))
        level = 1.0 - alpha
        test["recall_interval"] = bootstrap.single(
            bootstrap.rate(test_flags, test_labels == 1), weights, level).to_dict()
        test["fpr_interval"] = bootstrap.single(
            bootstrap.rate(test_flags, test_labels == 0), weights, level).to_dict()
    point["test"] = test
    return point


def operating_points(targets, primary: float, val_labels, val_scores, test_labels, test_scores,
                     *, resamples: int, alpha: float, seed: int) -> dict:
    """{"primary_fpr", "points": [one per target, in the order given]}."""
    return {"primary_fpr": primary,
            "points": [operating_point(t, val_labels, val_scores, test_labels, test_scores,
                                       resamples=resamples, alpha=alpha, seed=seed)
                       for t in targets]}


def primary_point(points: dict) -> dict | None:
    """The entry of the primary target in `operating_points(...)`'s result, or None."""
    primary = points.get("primary_fpr")
    for point in points.get("points", []):
        if primary is not None and abs(point.get("fpr_target", -1) - primary) < 1e-12:
            return point
    return None


@dataclass(frozen=True)
class Served:
    """What a served model applies to its network's probabilities: the temperature fitted on
    val, then (binary) the primary FPR target's threshold, which makes the `decision` column.
    It travels in the logged model's config under CONFIG_KEY (register writes it from
    evaluate's metrics.json) and in the version's `operating.*` tags."""
    temperature: float = 1.0
    threshold: float | None = None
    fpr_target: float | None = None

    @classmethod
    def from_config(cls, config: dict | None) -> Served:
        found = (config or {}).get(CONFIG_KEY) or {}
        return cls(float(found.get("temperature", 1.0)), _float_or_none(found.get("threshold")),
                   _float_or_none(found.get("fpr_target")))

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Served:
        return cls(_float_or_none(tags.get(TAG_PREFIX + "temperature")) or 1.0,
                   _float_or_none(tags.get(TAG_PREFIX + "threshold")),
                   _float_or_none(tags.get(TAG_PREFIX + "fpr_target")))

    def as_config(self) -> dict:
        return {CONFIG_KEY: {k: v for k, v in (("temperature", self.temperature),
                                                ("threshold", self.threshold),
                                                ("fpr_target", self.fpr_target))
                             if v is not None}}

    def apply(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(temperature-scaled probabilities, binary flags at the threshold or None)."""
        from pipeline import calibration

        scaled = calibration.scale(probs, self.temperature)
        if self.threshold is None or scaled.ndim != 2 or scaled.shape[1] != 2:
            return scaled, None
        return scaled, flags(scaled[:, 1], self.threshold)


CONFIG_KEY = "operating"
TAG_PREFIX = "operating."


def _float_or_none(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
