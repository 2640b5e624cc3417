"""Which captured rows people review, and why. Pure: frames in, picked rows and counts out.

Reasons, in priority order (the cap keeps them in this order):
1. `disagreement`: the shadow challenger labelled the row differently from the champion (a
   shadow row with the served row's score_id and another prediction);
2. `uncertain`: binary, P(positive) within `review.band` of the served threshold (the version's
   operating threshold, 0.5 when none is known); seven classes, top-1 probability below
   `review.top1_below` or top-1 minus top-2 below `review.margin_below`;
3. `sample`: `review.qc_rows` of the remaining confident rows, drawn at random with
   `review.seed`, so reviewers also see what the model is sure of (quality control).
Within a reason the most uncertain rows come first (closest to the threshold; smallest margin),
then the oldest. Rows are de-duplicated by image sha256 + text: the first in that order stays.
A row without a score_id cannot be traced back to the log and is left out (counted).

Every served row read ends in exactly one count of `stats`: picked (per reason), over_cap (per
reason), duplicate, already_queued, confident_not_sampled or no_score_id.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.params import ReviewParams

REASONS = ("disagreement", "uncertain", "sample")
CONFIDENT = "confident"
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # where it came from, for the batch's stats


def dedupe_key(image_sha256, thumbnail, text) -> str:
    """Image hash + text; a row whose image hash is unknown uses its thumbnail's hash."""
    image = image_sha256 if isinstance(image_sha256, str) and image_sha256 else \
        "thumb:" + hashlib.sha256(bytes(thumbnail or b"")).hexdigest()
    return f"{image}\x1f{text if isinstance(text, str) else ''}"


def _uncertainty(probabilities: pd.Series, classes: tuple[str, ...], versions: pd.Series,
                 thresholds: dict[str, Threshold], settings: ReviewParams):
    """(uncertain flags, urgency: lower = more uncertain, the threshold applied or NaN)."""
    probs = [json.loads(p) for p in probabilities]
    if len(classes) == 2:
        positive = np.array([float(p.get(classes[1], np.nan)) for p in probs])
        applied = np.array([thresholds[str(v)].value for v in versions], dtype=float)
        distance = np.abs(positive - applied)
        return distance <= settings.band, distance, applied
    top = np.array([(sorted(map(float, p.values()), reverse=True) + [0.0, 0.0])[:2]
                    for p in probs], dtype=float).reshape(-1, 2)
    margin = top[:, 0] - top[:, 1]
    return ((top[:, 0] < settings.top1_below) | (margin < settings.margin_below), margin,
            np.full(len(probs), np.nan))


def select(served: pd.DataFrame, shadow: pd.DataFrame, classes: tuple[str, ...],
           thresholds: dict[str, Threshold], settings: ReviewParams,
           already_queued: set[str] = frozenset()) -> tuple[pd.DataFrame, dict]:
    """The rows to review, in priority order, with `reason`, `urgency`, `threshold`,
    `shadow_prediction` and `shadow_version`; and the counts. `thresholds`: model_version (str)
    → Threshold for every served version (binary task); `already_queued`: dedupe keys of rows
    earlier batches queued."""
    counts = {"rows_read": int(len(served)), "shadow_rows": int(len(shadow)),
              "no_score_id": 0, "already_queued": 0, "duplicates": 0,
              "picked": dict.fromkeys(REASONS, 0), "over_cap": dict.fromkeys(REASONS, 0),
              "confident_not_sampled": 0}
    frame = served[served["score_id"].notna()].copy()
    counts["no_score_id"] = int(len(served) - len(frame))
    pairs = shadow[shadow["score_id"].notna()].drop_duplicates("score_id")
    pairs = pairs[["score_id", "prediction", "model_version"]].rename(
        columns={"prediction": "shadow_prediction", "model_version": "shadow_version"})
    frame = frame.merge(pairs, on="score_id", how="left")
    counts["paired_rows"] = int(frame["shadow_prediction"].notna().sum())
    uncertain, urgency, applied = _uncertainty(frame["probabilities"], classes,
                                               frame["model_version"], thresholds, settings)
    disagree = frame["shadow_prediction"].notna() & \
        (frame["shadow_prediction"].astype(str) != frame["prediction"].astype(str))
    frame["reason"] = np.where(disagree, "disagreement",
                               np.where(uncertain, "uncertain", CONFIDENT))
    frame["urgency"], frame["threshold"] = urgency, applied
    frame["priority"] = frame["reason"].map({"disagreement": 0, "uncertain": 1, CONFIDENT: 2})
    frame = frame.sort_values(["priority", "urgency", "time", "score_id"], kind="stable")
    frame["key"] = [dedupe_key(h, t, x) for h, t, x in
                    zip(frame["image_sha256"], frame["thumbnail"], frame["text"])]
    earlier = frame["key"].isin(already_queued)
    counts["already_queued"] = int(earlier.sum())
    frame = frame[~earlier]
    repeated = frame["key"].duplicated()
    counts["duplicates"] = int(repeated.sum())
    frame = frame[~repeated]

    confident = frame[frame["reason"] == CONFIDENT].sort_values("score_id")
    rng = np.random.default_rng(settings.seed)
    drawn = rng.choice(len(confident), size=min(settings.qc_rows, len(confident)),
                       replace=False) if len(confident) else np.array([], dtype=int)
    sampled = confident.iloc[np.sort(drawn)].copy()
    sampled["reason"] = "sample"
    counts["confident_not_sampled"] = int(len(confident) - len(sampled))
    candidates = pd.concat([frame[frame["reason"] != CONFIDENT], sampled])
    picked, over = candidates.iloc[:settings.max_items], candidates.iloc[settings.max_items:]
    for reason in REASONS:
        counts["picked"][reason] = int((picked["reason"] == reason).sum())
        counts["over_cap"][reason] = int((over["reason"] == reason).sum())
    accounted = (counts["no_score_id"] + counts["already_queued"] + counts["duplicates"]
                 + sum(counts["picked"].values()) + sum(counts["over_cap"].values())
                 + counts["confident_not_sampled"])
    assert accounted == counts["rows_read"], (accounted, counts)
    return picked.drop(columns=["priority"]).reset_index(drop=True), counts
