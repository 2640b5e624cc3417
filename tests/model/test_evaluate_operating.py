"""evaluate's operating points, calibration and grouping slices, on real shards and a real tiny
model: the served threshold is chosen on val and measured on test with intervals, the
temperature fitted on val is applied to what predictions.parquet records, and a grouping column
of the clean manifest becomes `by_<column>` slices."""
from __future__ import annotations

import json

import pandas as pd

from pipeline import calibration, operating_points
from pipeline.stages import evaluate
from tests.model.test_evaluate import project

COUNTS = {"train": {0: 2, 1: 2}, "val": {0: 20, 1: 20}, "test": {0: 15, 1: 15}}


def test_binary_evaluate_writes_operating_points_calibration_and_group_slices(tmp_path):
    params, paths = project(tmp_path, counts=COUNTS)
    # the clean manifest names a group for every test item; evaluate reads id + group only
    ids = [f"test:test.{i}" for i in range(30)] + [f"test:val.{i}" for i in range(40)]
    paths.manifest.parent.mkdir(parents=True)
    pd.DataFrame({"id": ids, "group": ["g1" if i % 3 else "g2" for i in range(70)]}) \
        .to_parquet(paths.manifest)
    stats = evaluate.run(params, paths)
    metrics = json.loads((paths.evaluate_dir / "metrics.json").read_text())
    predictions = pd.read_parquet(paths.predictions)
    val = predictions[predictions["split"] == "val"]
    test = predictions[predictions["split"] == "test"]

    block = metrics["calibration"]
    assert block["method"] == "temperature" and block["fitted"]
    assert block["val_nll_after"] <= block["val_nll_before"]
    assert {"test_ece_before", "test_ece_after", "val_ece_before", "val_ece_after"} <= set(block)
    # predictions hold the temperature-scaled (served) probabilities: scaling them back by 1/T
    # gives probabilities whose ECE is the recorded "before"
    probs = test[["prob_not_hateful", "prob_hateful"]].to_numpy()
    raw = calibration.scale(probs, 1 / block["temperature"])
    assert abs(calibration.ece(test["label"], raw) - block["test_ece_before"]) < 1e-6
    assert abs(calibration.ece(test["label"], probs) - block["test_ece_after"]) < 1e-9

    points = metrics["operating_points"]
    assert points["primary_fpr"] == 0.05
    assert [p["fpr_target"] for p in points["points"]] == [0.01, 0.05]
    primary = operating_points.primary_point(points)
    expected = operating_points.fpr_threshold(val["label"].to_numpy(),
                                              val["prob_hateful"].to_numpy(), 0.05)
    assert primary["threshold"] == expected and primary["val"]["fpr"] <= 0.05
    flagged = test["prob_hateful"].to_numpy() >= expected
    negatives = test["label"].to_numpy() == 0
    assert primary["test"]["fp"] == int((flagged & negatives).sum())
    interval = primary["test"]["fpr_interval"]
    assert interval["lower"] <= primary["test"]["fpr"] <= interval["upper"]
    assert interval["resamples"] == params.evaluate.bootstrap_resamples
    assert stats["primary_operating_point"]["threshold"] == expected

    assert set(metrics["test"]["by_group"]) == {"g1", "g2"}
    assert sum(v["samples"] for v in metrics["test"]["by_group"].values()) == 30


def test_calibration_none_keeps_the_models_probabilities():
    frame = pd.DataFrame({"id": ["a", "b", "c"], "label": [0, 1, 1],
                          "prob_not_hateful": [0.9, 0.2, 0.6], "prob_hateful": [0.1, 0.8, 0.4]})
    settings = evaluate.EvaluateParams(calibration="none")
    scaled, block = evaluate.calibrate({"val": frame, "test": frame},
                                       ["not_hateful", "hateful"], settings)
    assert block["temperature"] == 1.0 and block["reason"] == "evaluate.calibration is none"
    assert block["test_ece_before"] == block["test_ece_after"]
    pd.testing.assert_frame_equal(scaled["test"], frame)
