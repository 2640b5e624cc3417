"""evaluate stage on real shards and a real (tiny, random-init) model; threshold selection."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import StageFailed
from pipeline.model import build_model, save_model
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import checks, evaluate
from tests.model.shard_writer import write_shards
from tests.stores import sqlite_store

SMALL = {"train": {0: 2, 1: 2}, "val": {0: 10, 1: 10}, "test": {0: 9, 1: 11}}


def project(tmp_path, task="hateful_memes", counts=SMALL, corrupt=None, seed=0):
    params = parse_params({"task": task, "train": {"seed": seed},
                           "registry": {"tracking_uri": sqlite_store(tmp_path / "mlflow.db")}})
    paths = Paths(tmp_path)
    write_shards(paths.shards, task, counts=counts, corrupt=corrupt)
    save_model(build_model(params), paths.model_dir)
    return params, paths


# ---------------------------------------------------------------- the stage

def test_binary_evaluate_writes_metrics_predictions_and_plots(tmp_path):
    params, paths = project(tmp_path)
    stats = evaluate.run(params, paths)

    predictions = pd.read_parquet(paths.predictions)
    assert len(predictions) == 40 and predictions["id"].is_unique
    assert set(predictions["split"]) == {"val", "test"}
    expected_columns = {"id", "split", "source", "label", "prob_not_hateful", "prob_hateful",
                        "prediction", "prediction_name"}
    assert expected_columns <= set(predictions.columns)
    probs = predictions[["prob_not_hateful", "prob_hateful"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    metrics = json.loads((paths.evaluate_dir / "metrics.json").read_text())
    # the threshold is the val-chosen one, and it alone decides test predictions
    val = predictions[predictions["split"] == "val"]
    threshold, _ = evaluate.choose_threshold(val["label"].to_numpy(),
                                             val["prob_hateful"].to_numpy(), params.evaluate)
    assert metrics["decision"] == {"rule": "youden", "threshold": pytest.approx(threshold)}
    test = predictions[predictions["split"] == "test"]
    assert ((test["prob_hateful"] >= threshold).astype(int) == test["prediction"]).all()
    for key in ("auroc", "accuracy", "precision", "recall", "f1", "tp", "tn", "fp", "fn"):
        assert key in metrics["test"], key
    assert metrics["test"]["tp"] + metrics["test"]["tn"] + metrics["test"]["fp"] + \
        metrics["test"]["fn"] == 20
    assert set(metrics["test"]["by_source"]) == {"test"}
    assert metrics["val"]["by_source"]["test"]["samples"] == 20
    assert stats["scored"] == {"val": 20, "test": 20} and stats["mlflow"].startswith("skipped")

    plots = paths.evaluate_dir / "plots"
    for name in ("roc", "pr", "confusion", "calibration"):
        assert (plots / f"{name}.png").stat().st_size > 1000
        Image.open(plots / f"{name}.png").verify()
    confusion = pd.read_csv(plots / "confusion.csv")
    assert len(confusion) == 20 and set(confusion.columns) == {"actual", "predicted"}
    roc = pd.read_csv(plots / "roc.csv")
    assert {"fpr", "tpr", "threshold"} <= set(roc.columns) and roc["tpr"].iloc[-1] == 1.0

    # the checks stage reads exactly what evaluate wrote
    report = checks.run(params, paths)
    assert report["test_rows"] == 20


def test_seven_class_evaluate_reports_topk_macro_f1_and_per_class_recall(tmp_path):
    counts = {"train": {k: 1 for k in range(7)}, "val": {k: 2 for k in range(7)},
              "test": {k: 3 for k in range(7)}}
    params, paths = project(tmp_path, task="moderation7", counts=counts)
    evaluate.run(params, paths)
    metrics = json.loads((paths.evaluate_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["decision"]["rule"] == "argmax"
    assert 0 <= test["top1"] <= test["top2"] <= 1
    assert len(test["per_class_recall"]) == 7 and "Hate" in test["per_class_recall"]
    assert sum(sum(row.values()) for row in test["confusion"].values()) == 21
    predictions = pd.read_parquet(paths.predictions)
    assert len([c for c in predictions.columns if c.startswith("prob_")]) == 7
    roc = pd.read_csv(paths.evaluate_dir / "plots" / "roc.csv")
    assert roc["class"].nunique() == 7  # one-vs-rest curve per class


def test_corrupt_test_samples_are_counted_and_fail_the_checks(tmp_path):
    params, paths = project(tmp_path, corrupt={"test": 2})
    stats = evaluate.run(params, paths)
    assert stats["scored"]["test"] == 20 and stats["expected"]["test"] == 22
    assert len(stats["skipped"]["test"]) == 2
    with pytest.raises(StageFailed, match="prediction_count_matches_test_set"):
        checks.run(params, paths)


def test_metrics_and_plots_are_logged_to_the_training_run(tmp_path):
    from mlflow import MlflowClient

    params, paths = project(tmp_path)
    uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    paths.train_dir.mkdir(parents=True)
    (paths.train_dir / "mlflow_run.json").write_text(json.dumps(
        {"run_id": run_id, "experiment_id": experiment, "tracking_uri": uri}))

    stats = evaluate.run(params, paths)
    assert stats["mlflow"] == f"logged to run {run_id}"
    run = client.get_run(run_id)
    assert "eval_test_auroc" in run.data.metrics and "eval_val_auroc" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(run_id, "evaluate/plots")}
    assert "evaluate/plots/roc.png" in logged and "evaluate/plots/confusion.csv" in logged


def test_missing_model_and_wrong_task_fail_clearly(tmp_path):
    params, paths = project(tmp_path)
    other = parse_params({"task": "moderation7"})
    with pytest.raises(StageFailed, match="shards are for task"):
        evaluate.run(other, paths)
    (paths.model_dir / "config.json").unlink()
    with pytest.raises(StageFailed, match="run `mmguard train` first"):
        evaluate.run(params, paths)
