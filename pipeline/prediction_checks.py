"""Checks over a predictions frame, as pure functions (the checks stage does the I/O).

A predictions frame has one row per scored item: `id, split, source, label, prob_<class>…,
prediction, prediction_name` (see docs/architecture.md). Each check returns a `CheckResult`; the
stage fails when any error-level result did not pass. A check never raises on bad data: bad data
is exactly what it reports.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.contracts import probability_column  # serving and evaluate import it from here

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    level: Level
    value: float | int | str | None
    threshold: float | int | str | None
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        # NaN is not valid JSON; a metric that could not be computed is reported as null.
        if isinstance(data["value"], float) and not math.isfinite(data["value"]):
            data["value"] = None
        return data


def _probabilities(frame: pd.DataFrame, class_names: tuple[str, ...]) -> pd.DataFrame | None:
    columns = [probability_column(name) for name in class_names]
    if any(column not in frame.columns for column in columns):
        return None
    return frame[columns].apply(pd.to_numeric, errors="coerce")


def _missing_columns(frame: pd.DataFrame, class_names: tuple[str, ...]) -> list[str]:
    needed = ["label", "prediction"] + [probability_column(n) for n in class_names]
    return [column for column in needed if column not in frame.columns]


def check_columns(frame: pd.DataFrame, class_names: tuple[str, ...]) -> CheckResult:
    missing = _missing_columns(frame, class_names)
    return CheckResult("required_columns", "error", len(missing), 0, not missing,
                       f"missing: {missing}" if missing else "all present")


def check_no_null_predictions(frame: pd.DataFrame) -> CheckResult:
    nulls = int(frame["prediction"].isna().sum()) if "prediction" in frame else len(frame)
    return CheckResult("no_null_predictions", "error", nulls, 0, nulls == 0,
                       f"{nulls} of {len(frame)} rows have no prediction")


def check_valid_labels(frame: pd.DataFrame, class_names: tuple[str, ...]) -> CheckResult:
    """Predictions are class indices of the task and agree with prediction_name."""
    if "prediction" not in frame:
        return CheckResult("predictions_are_valid_labels", "error", len(frame), 0, False,
                           "no prediction column")
    numeric = pd.to_numeric(frame["prediction"], errors="coerce")
    is_index = numeric.notna() & (numeric % 1 == 0) & numeric.between(0, len(class_names) - 1)
    bad = ~is_index
    if "prediction_name" in frame:
        expected_names = numeric.where(is_index, -1).astype(int).map(
            lambda i: class_names[i] if i >= 0 else None)
        bad |= expected_names != frame["prediction_name"]
    invalid = int(bad.sum())
    examples = frame.loc[bad, "prediction"].head(3).tolist()
    return CheckResult("predictions_are_valid_labels", "error", invalid, 0, invalid == 0,
                       f"{invalid} invalid, e.g. {examples}" if invalid else "all valid")


def check_no_null_probabilities(frame: pd.DataFrame, class_names: tuple[str, ...]) -> CheckResult:
    probs = _probabilities(frame, class_names)
    nulls = len(frame) if probs is None else int(probs.isna().any(axis=1).sum())
    return CheckResult("no_null_probabilities", "error", nulls, 0, nulls == 0,
                       f"{nulls} rows with a missing or non-numeric probability")


def check_probability_range(frame: pd.DataFrame, class_names: tuple[str, ...]) -> CheckResult:
    probs = _probabilities(frame, class_names)
    if probs is None:
        return CheckResult("probabilities_in_unit_interval", "error", len(frame), 0, False,
                           "probability columns missing")
    values = probs.to_numpy(dtype=float)
    outside = int((~np.isnan(values) & ((values < 0) | (values > 1))).any(axis=1).sum())
    return CheckResult("probabilities_in_unit_interval", "error", outside, 0, outside == 0,
                       f"{outside} rows with a probability outside [0, 1]")


def check_probabilities_sum_to_one(frame: pd.DataFrame, class_names: tuple[str, ...],
                                   tolerance: float) -> CheckResult:
    probs = _probabilities(frame, class_names)
    if probs is None or probs.empty:
        return CheckResult("probabilities_sum_to_one", "error", None, tolerance, probs is not None,
                           "probability columns missing" if probs is None else "no rows")
    deviation = (probs.sum(axis=1, min_count=len(class_names)) - 1.0).abs()
    worst = float(deviation.max(skipna=False))
    passed = math.isfinite(worst) and worst <= tolerance
    return CheckResult("probabilities_sum_to_one", "error", worst, tolerance, passed,
                       "largest |sum - 1| over rows")


def check_prediction_count(frame: pd.DataFrame, expected: int) -> CheckResult:
    # Ids must be unique too: a duplicated id would make the count right for the wrong reason.
    count = int(frame["id"].nunique()) if "id" in frame else len(frame)
    passed = count == expected and count == len(frame)
    return CheckResult("prediction_count_matches_test_set", "error", len(frame), expected, passed,
                       f"{len(frame)} rows, {count} distinct ids, {expected} test samples")


def check_class_shares(frame: pd.DataFrame, class_names: tuple[str, ...], min_share: float,
                       max_share: float, level: Level) -> list[CheckResult]:
    """Each class's share of the predictions lies in [min_share, max_share]: catches a model that
    collapsed onto one class, which accuracy on an imbalanced test set can hide."""
    total = max(len(frame), 1)
    numeric = pd.to_numeric(frame.get("prediction"), errors="coerce")
    results = []
    for index, name in enumerate(class_names):
        share = float((numeric == index).sum() / total)
        passed = min_share <= share <= max_share
        results.append(CheckResult(f"class_share[{name}]", level, round(share, 6),
                                   f"[{min_share}, {max_share}]", passed,
                                   "share of predictions"))
    return results


def _labelled(frame: pd.DataFrame, class_names: tuple[str, ...]):
    """(labels, probs) of the rows whose label and probabilities are all numeric."""
    probs = _probabilities(frame, class_names)
    labels = pd.to_numeric(frame["label"], errors="coerce")
    usable = labels.between(0, len(class_names) - 1) & probs.notna().all(axis=1)
    return labels[usable].to_numpy(dtype=int), probs[usable].to_numpy(dtype=float)


def auroc(frame: pd.DataFrame, class_names: tuple[str, ...]) -> float:
    """Binary AUROC from the positive-class probability; NaN when undefined."""
    labels, probs = _labelled(frame, class_names)
    return metrics.auroc(labels, probs[:, 1]) if len(labels) else float("nan")


def top_k_accuracy(frame: pd.DataFrame, class_names: tuple[str, ...], k: int) -> float:
    labels, probs = _labelled(frame, class_names)
    return metrics.top_k_accuracy(labels, probs, k)


def check_better_than_chance(frame: pd.DataFrame,
                             class_names: tuple[str, ...]) -> list[CheckResult]:
    """Binary: AUROC > 0.5. Multi-class: top-1 > 1/C and top-2 > 2/C."""
    if _missing_columns(frame, class_names):
        return [CheckResult("better_than_chance", "error", None, None, False, "columns missing")]
    if len(class_names) == 2:
        value = auroc(frame, class_names)
        return [CheckResult("auroc_above_chance", "error", value, 0.5,
                            math.isfinite(value) and value > 0.5,
                            "AUROC of the positive-class probability")]
    results = []
    for k in (1, 2):
        value = top_k_accuracy(frame, class_names, k)
        chance = k / len(class_names)
        results.append(CheckResult(f"top{k}_above_chance", "error", value, round(chance, 6),
                                   math.isfinite(value) and value > chance,
                                   f"top-{k} accuracy against {k}/{len(class_names)}"))
    return results


def run_checks(frame: pd.DataFrame, class_names: tuple[str, ...], expected_count: int, *,
            min_class_share: float, max_class_share: float, class_share_level: Level,
            sum_tolerance: float) -> list[CheckResult]:
    """Every check over the test-split predictions, in report order."""
    columns = check_columns(frame, class_names)
    results = [columns, check_prediction_count(frame, expected_count)]
    if not columns.passed:
        return results  # the remaining checks would only repeat "column missing"
    results += [
        check_no_null_predictions(frame),
        check_valid_labels(frame, class_names),
        check_no_null_probabilities(frame, class_names),
        check_probability_range(frame, class_names),
        check_probabilities_sum_to_one(frame, class_names, sum_tolerance),
        *check_class_shares(frame, class_names, min_class_share, max_class_share,
                            class_share_level),
        *check_better_than_chance(frame, class_names),
    ]
    return results
