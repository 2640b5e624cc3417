"""The text_peer stage on a real clean manifest and evaluate-shaped predictions: the peer is
scored on exactly the model's test ids, side by side with the model; predictions from other
data stop the stage; `mmguard text_peer` runs it; the run summary shows both."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics, workflow
from pipeline.cli import app
from pipeline.contracts import probability_column
from pipeline.errors import StageFailed
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import text_peer as stage
from pipeline.taxonomy import class_names
from tests.data.meme_text_fixture import write_quirky_manifest


def write_predictions(paths: Paths, manifest: pd.DataFrame, task: str, drop: int = 0,
                      seed: int = 0) -> pd.DataFrame:
    """evaluate's predictions.parquet for the manifest's val and test rows, minus the first
    `drop` test rows (rows whose image did not decode), with noisy model probabilities."""
    names = class_names(task)
    rows = manifest[manifest["split"].isin(["val", "test"])].reset_index(drop=True)
    rows = rows.drop(rows.index[rows["split"] == "test"][:drop]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(rows), len(names)))
    logits[np.arange(len(rows)), rows["label"]] += 1.0  # better than chance, far from perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"id": rows["id"], "split": rows["split"], "source": "synthetic",
                          "label": rows["label"].astype(np.int64)})
    for k, name in enumerate(names):
        frame[probability_column(name)] = probs[:, k]
    frame["prediction"] = probs.argmax(axis=1)
    frame["prediction_name"] = [names[k] for k in frame["prediction"]]
    paths.predictions.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(paths.predictions, index=False)
    return frame


def read(path):
    return json.loads(path.read_text())


def test_peer_is_scored_on_the_model_test_ids_beside_the_model(tmp_path):
    paths = Paths(tmp_path)
    manifest = write_quirky_manifest(paths)
    predictions = write_predictions(paths, manifest, "hateful_memes", drop=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"task": "hateful_memes"}))
    result = CliRunner().invoke(app, ["text_peer", "--params", str(params_file),
                                      "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output

    peer = read(tmp_path / "artifacts/text_peer/metrics.json")
    stats = read(tmp_path / "artifacts/text_peer/stats.json")
    model_test = predictions[predictions["split"] == "test"]
    assert peer["metric"] == "auroc" and peer["c"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    # the model's 22 decoded test rows, not the manifest's 24
    assert peer["test"]["samples"] == peer["model_test"]["samples"] == len(model_test) == 22
    assert stats["test_compared"] == 22 and stats["test_not_scored_by_model"] == 2
    assert stats["test_not_scored_by_model_ids"] == ["synthetic:test.0000",
                                                     "synthetic:test.0001"]
    assert stats["peer_on_whole_manifest_test"]["samples"] == 24
    model_auroc = metrics.auroc(model_test["label"], model_test["prob_hateful"])
    assert peer["model_test"]["auroc"] == pytest.approx(model_auroc)
    assert peer["test"]["auroc"] > 0.9  # the captions carry the label; the noisy model less so
    assert peer["gain"] == pytest.approx(model_auroc - peer["test"]["auroc"]) and peer["gain"] < 0
    assert {"accuracy", "precision", "recall", "f1", "tp", "threshold"} <= set(peer["test"])
    assert stats["blank_texts"] == {"train": 2, "val": 2, "test": 2}

    summary = workflow.summary(paths)
    line = next(x for x in summary.splitlines() if "text peer" in x)
    assert f"model auroc {model_auroc:.4f}" in line
    assert f"TF-IDF text peer auroc {peer['test']['auroc']:.4f}" in line
    assert "on the same 22 test rows: model BEHIND" in line


def test_seven_classes_compare_top1_and_top2(tmp_path):
    paths = Paths(tmp_path)
    manifest = write_quirky_manifest(paths, "moderation7")
    write_predictions(paths, manifest, "moderation7")
    out = stage.run(parse_params({"task": "moderation7"}), paths)
    peer = read(tmp_path / "artifacts/text_peer/metrics.json")
    assert out["metric"] == peer["metric"] == "top1"
    assert {"top1", "top2", "macro_f1"} <= set(peer["test"]) and "auroc" not in peer["test"]
    assert set(peer["model_test"]) == {"samples", "top1", "top2"}
    assert peer["gain"] == pytest.approx(peer["model_test"]["top1"] - peer["test"]["top1"])


def test_predictions_of_other_data_stop_the_stage(tmp_path):
    paths = Paths(tmp_path)
    manifest = write_quirky_manifest(paths)
    params = parse_params({"task": "hateful_memes"})
    predictions = write_predictions(paths, manifest, "hateful_memes")
    stranger = predictions.index[predictions["split"] == "test"][0]
    predictions.loc[stranger, "id"] = "synthetic:elsewhere"
    predictions.to_parquet(paths.predictions, index=False)
    with pytest.raises(StageFailed, match="not in the manifest's test split"):
        stage.run(params, paths)
    predictions = write_predictions(paths, manifest, "hateful_memes")
    predictions.loc[stranger, "label"] = 1 - predictions.loc[stranger, "label"]
    predictions.to_parquet(paths.predictions, index=False)
    with pytest.raises(StageFailed, match="1 test ids carry another label"):
        stage.run(params, paths)
    assert not (tmp_path / "artifacts/text_peer/metrics.json").exists()


def test_empty_test_split_is_a_clear_error(tmp_path):
    paths = Paths(tmp_path)
    manifest = write_quirky_manifest(paths)
    predictions = write_predictions(paths, manifest, "hateful_memes")
    predictions[predictions["split"] == "val"].to_parquet(paths.predictions, index=False)
    with pytest.raises(StageFailed, match="text_peer: the test split has no rows"):
        stage.run(parse_params({"task": "hateful_memes"}), paths)
