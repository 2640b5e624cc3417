"""Each prediction check passes on a sane frame and fails on a frame broken for it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import prediction_checks as pc
from pipeline.errors import StageFailed
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import checks
from pipeline.taxonomy import class_names

BINARY = class_names("hateful_memes")
SEVEN = class_names("moderation7")


def predictions(names: tuple[str, ...], n: int = 40, seed: int = 0, skill: float = 3.0):
    """A frame where the probabilities carry real signal about the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(names)
    logits = rng.normal(size=(n, len(names)))
    logits[np.arange(n), labels] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"id": [f"s:{i}" for i in range(n)], "split": "test",
                          "source": "synthetic", "label": labels})
    for k, name in enumerate(names):
        frame[pc.probability_column(name)] = probs[:, k]
    frame["prediction"] = probs.argmax(axis=1)
    frame["prediction_name"] = [names[i] for i in frame["prediction"]]
    return frame


def by_name(results):
    return {r.name: r for r in results}


def run_checks(frame, names, expected=None, level="error", max_share=0.95):
    return pc.run_checks(frame, names, len(frame) if expected is None else expected,
                      min_class_share=0.0, max_class_share=max_share, class_share_level=level,
                      sum_tolerance=1e-4)


@pytest.mark.parametrize("names", [BINARY, SEVEN])
def test_sane_frame_passes_every_check(names):
    results = run_checks(predictions(names, n=70), names)
    assert [r.name for r in results if not r.passed] == []
    assert len(results) == 7 + len(names) + (1 if len(names) == 2 else 2)


def test_null_prediction_fails():
    frame = predictions(BINARY).astype({"prediction": "float"})
    frame.loc[3, "prediction"] = np.nan
    result = pc.check_no_null_predictions(frame)
    assert not result.passed and result.value == 1


@pytest.mark.parametrize("bad", [7, -1, 0.5, "hateful"])
def test_prediction_outside_label_space_fails(bad):
    frame = predictions(BINARY).astype({"prediction": "object"})
    frame.loc[0, "prediction"] = bad
    result = pc.check_valid_labels(frame, BINARY)
    assert not result.passed and result.value == 1


def test_prediction_name_disagreeing_with_index_fails():
    frame = predictions(BINARY)
    frame.loc[0, "prediction_name"] = "something_else"
    assert not pc.check_valid_labels(frame, BINARY).passed


def test_probability_outside_unit_interval_fails():
    frame = predictions(BINARY)
    frame.loc[1, "prob_hateful"] = 1.2
    frame.loc[1, "prob_not_hateful"] = -0.2  # still sums to one: only the range check catches it
    assert pc.check_probabilities_sum_to_one(frame, BINARY, 1e-4).passed
    result = pc.check_probability_range(frame, BINARY)
    assert not result.passed and result.value == 1


def test_probabilities_not_summing_to_one_fail():
    frame = predictions(SEVEN)
    frame.loc[2, "prob_Hate"] += 0.01
    result = pc.check_probabilities_sum_to_one(frame, SEVEN, 1e-4)
    assert not result.passed and result.value == pytest.approx(0.01, abs=1e-9)


def test_null_probability_fails_null_and_sum_checks():
    frame = predictions(BINARY)
    frame.loc[4, "prob_hateful"] = np.nan
    assert pc.check_no_null_probabilities(frame, BINARY).value == 1
    assert not pc.check_probabilities_sum_to_one(frame, BINARY, 1e-4).passed


def test_missing_probability_column_fails_early():
    frame = predictions(BINARY).drop(columns=["prob_hateful"])
    results = by_name(run_checks(frame, BINARY))
    assert not results["required_columns"].passed
    assert "prob_hateful" in results["required_columns"].detail


def test_prediction_count_must_match_and_ids_be_unique():
    frame = predictions(BINARY, n=20)
    assert not pc.check_prediction_count(frame, 21).passed
    duplicated = pd.concat([frame.iloc[:19], frame.iloc[[0]]], ignore_index=True)
    assert not pc.check_prediction_count(duplicated, 20).passed
    assert pc.check_prediction_count(frame, 20).passed


def test_collapsed_class_distribution_is_flagged_at_its_level():
    frame = predictions(BINARY, n=40)
    frame["prediction"] = 1
    frame["prediction_name"] = "hateful"
    shares = by_name(pc.check_class_shares(frame, BINARY, 0.0, 0.95, "warning"))
    assert not shares["class_share[hateful]"].passed
    assert shares["class_share[hateful]"].level == "warning"
    assert shares["class_share[hateful]"].value == 1.0
    assert shares["class_share[not_hateful]"].passed


def test_binary_model_no_better_than_chance_fails():
    frame = predictions(BINARY, n=60)
    frame["label"] = 1 - frame["label"]  # inverted: AUROC well below 0.5
    (result,) = pc.check_better_than_chance(frame, BINARY)
    assert result.name == "auroc_above_chance" and not result.passed and result.value < 0.5


def test_single_class_test_set_has_no_auroc_and_fails():
    frame = predictions(BINARY)
    frame["label"] = 0
    (result,) = pc.check_better_than_chance(frame, BINARY)
    assert not result.passed and result.to_dict()["value"] is None


def test_seven_class_model_at_chance_fails_top1_and_top2():
    frame = predictions(SEVEN, n=70, skill=0.0)
    rng = np.random.default_rng(1)
    frame["label"] = rng.permutation(frame["label"].to_numpy())
    probs = np.full((70, 7), 1 / 7)
    probs[:, 0] += 1e-3  # always ranks class 0 then class 1 first: exactly chance
    probs[:, 1] += 5e-4
    probs /= probs.sum(axis=1, keepdims=True)
    for k, name in enumerate(SEVEN):
        frame[pc.probability_column(name)] = probs[:, k]
    results = by_name(pc.check_better_than_chance(frame, SEVEN))
    assert results["top1_above_chance"].value == pytest.approx(1 / 7)
    assert not results["top1_above_chance"].passed
    assert not results["top2_above_chance"].passed


# --- the stage over files ---------------------------------------------------------------------

def write_inputs(root, frame, test_samples):
    paths = Paths(root)
    paths.evaluate_dir.mkdir(parents=True)
    paths.shards.mkdir(parents=True)
    val = frame.assign(split="val", id=frame["id"] + ":val")
    pd.concat([val, frame]).to_parquet(paths.predictions)
    paths.shard_sizes.write_text(json.dumps({"task": "hateful_memes", "class_names": BINARY,
                                             "splits": {"test": {"samples": test_samples,
                                                                 "shards": []}}}))
    return paths


def test_stage_writes_report_and_passes(tmp_path):
    paths = write_inputs(tmp_path, predictions(BINARY, n=30), 30)
    stats = checks.run(parse_params({}), paths)
    report = json.loads((paths.checks_dir / "report.json").read_text())
    assert report["passed"] and stats["test_rows"] == 30  # val rows are not counted
    assert {"name", "level", "value", "threshold", "passed"} <= set(report["checks"][0])
    assert paths.stats("checks").exists()


def test_stage_fails_on_error_level_check_and_still_writes_report(tmp_path):
    paths = write_inputs(tmp_path, predictions(BINARY, n=30), 31)
    with pytest.raises(StageFailed, match="prediction_count_matches_test_set"):
        checks.run(parse_params({}), paths)
    report = json.loads((paths.checks_dir / "report.json").read_text())
    assert report["passed"] is False
    assert report["failed_errors"] == ["prediction_count_matches_test_set"]


def test_stage_warning_does_not_fail_but_error_level_does(tmp_path):
    frame = predictions(BINARY, n=30)
    frame["prob_hateful"] = np.where(frame["label"] == 1, 0.9, 0.6)  # all above 0.5 ...
    frame["prob_not_hateful"] = 1 - frame["prob_hateful"]
    frame["prediction"], frame["prediction_name"] = 1, "hateful"  # ... so all predicted hateful
    paths = write_inputs(tmp_path, frame, 30)
    stats = checks.run(parse_params({}), paths)
    assert stats["failed_warnings"] == 1 and stats["passed"]
    with pytest.raises(StageFailed, match=r"class_share\[hateful\]"):
        checks.run(parse_params({"checks": {"class_share_level": "error"}}), paths)


def test_stage_without_predictions_fails_clearly(tmp_path):
    with pytest.raises(StageFailed, match="run `mmguard evaluate` first"):
        checks.run(parse_params({}), Paths(tmp_path))
