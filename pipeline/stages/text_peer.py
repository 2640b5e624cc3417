"""text_peer stage: the TF-IDF text-only baseline, trained and scored in every run.

Reads the clean manifest (its train, val and test captions) and evaluate's predictions; writes
artifacts/text_peer/metrics.json (a DVC metric: the peer and the model side by side on the same
test rows) and stats.json. Fits and scores through pipeline/text_peer.py.

Which test rows: the model's test set is what evaluate scored (the shard stage's test split,
rows whose image decoded), so the score of record is the peer's on exactly the ids of
predictions.parquet's test rows. Manifest test rows the model never scored are counted and
named in stats.json (with the peer's score on the whole manifest test split), not compared. A
model test id the manifest's test split lacks, or a label that differs, means the predictions
come from other data: the stage fails rather than compare different sets.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd

from pipeline import atomic, contracts, metrics, text_peer
from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.taxonomy import class_names

STAGE = text_peer.STAGE
SHOWN_IDS = 20  # ids named in stats.json per list; the counts are always complete


def json_safe(value):
    """NaN and infinities (an undefined metric) as null, as evaluate writes them."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def comparison_rows(manifest_test: pd.DataFrame, model_test: pd.DataFrame,
                    ) -> tuple[pd.DataFrame, list[str]]:
    """The manifest's test rows in the order of the model's test predictions, and the ids of
    manifest test rows the model did not score. StageFailed when the two are not the same data."""
    if not model_test["id"].is_unique:
        raise StageFailed(f"{STAGE}: predictions.parquet lists a test id twice")
    by_id = manifest_test.set_index("id")
    unknown = [i for i in model_test["id"] if i not in by_id.index]
    if unknown:
        raise StageFailed(f"{STAGE}: {len(unknown)} test ids of predictions.parquet are not in "
                          f"the manifest's test split (first: {unknown[:3]}); the predictions "
                          "come from other data: re-run `mmguard evaluate`")
    rows = by_id.loc[model_test["id"]].reset_index()
    differ = rows["label"].to_numpy() != model_test["label"].to_numpy()
    if differ.any():
        raise StageFailed(f"{STAGE}: {int(differ.sum())} test ids carry another label in "
                          f"predictions.parquet than in the manifest (first: "
                          f"{rows['id'][differ].tolist()[:3]}): re-run `mmguard evaluate`")
    scored = set(model_test["id"])
    return rows, [i for i in manifest_test["id"] if i not in scored]


def model_headline(task: str, model_test: pd.DataFrame) -> dict:
    """The model's metrics of record on its test predictions (the same rows as the peer's)."""
    names = class_names(task)
    probs = model_test[[contracts.probability_column(n) for n in names]].to_numpy(float)
    labels = model_test["label"].to_numpy(dtype=np.int64)
    result = {"samples": int(len(labels)), text_peer.gate_metric(task):
              text_peer.score(task, labels, probs)}
    if len(names) > 2:
        result["top2"] = metrics.top_k_accuracy(labels, probs, 2)
    return result


def run(params: Params, paths: Paths) -> dict:
    started = time.monotonic()
    task, names = params.task, class_names(params.task)
    manifest = contracts.read(paths.manifest, contracts.MANIFEST, stage=STAGE,
                              produced_by="dedupe", columns=("id", "task", "split", "text",
                                                             "label"))
    other = sorted(set(manifest["task"]) - {task})
    if other:
        raise StageFailed(f"{STAGE}: the manifest holds rows of task {other}, params.task is "
                          f"{task!r}")
    predictions = contracts.read(
        paths.predictions, contracts.predictions(names), stage=STAGE, produced_by="evaluate",
        columns=["id", "split", "label"] + [contracts.probability_column(n) for n in names])
    split = {s: manifest[manifest["split"] == s].reset_index(drop=True)
             for s in ("train", "val", "test")}
    model_test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    compared, unscored = comparison_rows(split["test"], model_test)

    try:
        text_peer.require_rows("test", compared["label"].to_numpy(), "score")
        tuned = text_peer.tune(task, split["train"]["text"], split["train"]["label"],
                               split["val"]["text"], split["val"]["label"], params.text_peer)
    except text_peer.TextPeerError as exc:
        raise StageFailed(f"{STAGE}: {exc}") from None

    def probs(frame: pd.DataFrame) -> np.ndarray:
        return tuned.peer.predict_proba(frame["text"])

    val_labels = split["val"]["label"].to_numpy(dtype=np.int64)
    val_probs = probs(split["val"])
    threshold = (text_peer.youden_threshold(val_labels, val_probs[:, 1]) if len(names) == 2
                 else None)
    metric = text_peer.gate_metric(task)
    peer_test = text_peer.split_metrics(task, compared["label"].to_numpy(), probs(compared),
                                        threshold)
    model_test_metrics = model_headline(task, model_test)
    result = {
        "task": task, "metric": metric, "c": tuned.c, "fallback": tuned.fallback,
        "threshold": threshold,
        "val": text_peer.split_metrics(task, val_labels, val_probs, threshold),
        "test": peer_test,
        "model_test": model_test_metrics,
        # > 0: the model beats the peer on the same rows; the gate asks for more than
        # gate.min_gain_over_text_peer
        "gain": model_test_metrics[metric] - peer_test[metric],
    }
    whole_test = split["test"]
    stats = {
        "rows": {s: len(frame) for s, frame in split.items()},
        "blank_texts": {s: text_peer.clean_texts(frame["text"])[1]
                        for s, frame in split.items()},
        "vocabulary": tuned.vocabulary, "c": tuned.c, "fallback": tuned.fallback,
        "val_scores": {str(c): s for c, s in tuned.val_scores.items()},
        "test_compared": len(compared),
        "test_not_scored_by_model": len(unscored),
        "test_not_scored_by_model_ids": unscored[:SHOWN_IDS],
        "peer_on_whole_manifest_test": {
            "samples": len(whole_test),
            metric: text_peer.score(task, whole_test["label"].to_numpy(dtype=np.int64),
                                    probs(whole_test))},
        "seconds": round(time.monotonic() - started, 2),
    }
    out = text_peer.output_dir(paths)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(text_peer.metrics_path(paths), json_safe(result))
    atomic.write_json(paths.stats(STAGE), json_safe(stats))
    return json_safe({"metric": metric, "c": tuned.c, "text_peer": peer_test[metric],
                      "model": model_test_metrics[metric], "gain": result["gain"],
                      "fallback": tuned.fallback, "test_compared": len(compared)})
