"""evaluate stage: score the trained model on the val and test shards.

Binary task: the decision threshold is chosen on VAL (params.evaluate.threshold_rule) and then
applied unchanged to test, so test numbers are not tuned on test. Seven classes: argmax.

Calibration: a temperature is fitted on val (pipeline/calibration.py) and applied to val and
test, so `prob_*` in predictions.parquet are the probabilities the served model returns; the
expected calibration error before and after is in metrics.json `calibration`. Binary operating
points: per `evaluate.fpr_targets`, the threshold chosen on (calibrated) val at that FPR, with
test recall and FPR and their bootstrap intervals (pipeline/operating_points.py); the primary
one's threshold is what the served model flags with.

Writes artifacts/evaluate/{metrics.json, predictions.parquet, stats.json, plots/} and logs the
metrics and plots to the training MLflow run named in artifacts/train/mlflow_run.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_curve, roc_curve

from pipeline import atomic, calibration, metrics, operating_points, plots
from pipeline import contracts
from pipeline.contracts import ShardIndex
from pipeline.errors import StageFailed
from pipeline.model import load_model
from pipeline.model.data import DataError, eval_loader, read_sizes
from pipeline.params import EvaluateParams, Params
from pipeline.paths import Paths
from pipeline.prediction_checks import probability_column
from pipeline.taxonomy import class_names

EVAL_SPLITS = ("val", "test")


# ---------------------------------------------------------------- scoring

@torch.no_grad()
def score_split(model, paths: Paths, split: str, sizes: dict, batch_size: int
                ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Probabilities for every decodable sample of `split`, and the (id, reason) of the rest."""
    model.eval()
    names = model.class_names
    loader = eval_loader(paths.shards, split, sizes, batch_size, model.preprocess,
                         model.tokenize)
    ids, labels, chunks, skipped = [], [], [], []
    for batch in loader:
        skipped += batch.skipped
        if len(batch) == 0:
            continue
        logits = model(batch.images.to(model.device), batch.tokens.to(model.device)).logits
        chunks.append(logits.float().softmax(dim=-1).cpu().numpy())
        ids += batch.ids
        labels += batch.labels.tolist()
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(names)))
    frame = pd.DataFrame({"id": ids, "split": split,
                          # ids are `<source>:<source_id>` (docs/architecture.md)
                          "source": [i.split(":", 1)[0] for i in ids],
                          "label": np.asarray(labels, dtype=np.int64)})
    for k, name in enumerate(names):
        frame[probability_column(name)] = probs[:, k].astype(np.float64)
    return frame, skipped


def choose_threshold(labels: np.ndarray, scores: np.ndarray, settings: EvaluateParams
                     ) -> tuple[float, str]:
    """(threshold, rule actually used). Youden's J = TPR - FPR or F1, maximised on val; falls back
    to the fixed threshold when val holds a single class (no curve to optimise)."""
    rule = settings.threshold_rule
    if rule == "fixed":
        return settings.fixed_threshold, "fixed"
    if len(np.unique(labels)) < 2:
        return settings.fixed_threshold, f"fixed (fallback: val has one class, {rule} undefined)"
    if rule == "youden":
        fpr, tpr, thresholds = roc_curve(labels, scores)
        best = int(np.argmax(tpr - fpr))
        # roc_curve's first threshold is +inf ("predict nothing positive"); cap it at 1.
        return float(min(thresholds[best], 1.0)), "youden"
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]), "f1"


def add_predictions(frame: pd.DataFrame, names, threshold: float | None) -> pd.DataFrame:
    probs = frame[[probability_column(n) for n in names]].to_numpy()
    if threshold is not None:  # binary
        predicted = (probs[:, 1] >= threshold).astype(np.int64)
    else:
        predicted = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, int)
    frame = frame.copy()
    frame["prediction"] = predicted
    frame["prediction_name"] = [names[i] for i in predicted]
    return frame


# ---------------------------------------------------------------- metrics

def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def frame_metrics(frame: pd.DataFrame, names, threshold: float | None) -> dict:
    """The task's metrics over one slice of predictions."""
    labels = frame["label"].to_numpy(dtype=np.int64)
    probs = frame[[probability_column(n) for n in names]].to_numpy(dtype=np.float64)
    result: dict = {"samples": int(len(frame))}
    if len(frame) == 0:
        return result
    if threshold is not None:
        result |= metrics.binary_metrics(labels, probs, threshold)
        return result
    full = metrics.multiclass_metrics(labels, probs)
    result |= {"top1": full["top1"], "top2": full["top2"], "macro_f1": full["macro_f1"],
               "per_class_recall": dict(zip(names, full["per_class_recall"])),
               "confusion": {actual: dict(zip(names, row))
                             for actual, row in zip(names, full["confusion"])}}
    return result


def all_metrics(predictions: pd.DataFrame, names, threshold: float | None,
                groups: pd.DataFrame | None = None) -> dict:
    """Overall metrics per split, then per source inside each split, and per value of each
    grouping column (`by_<column>`) when `groups` (id + columns) is given."""
    if groups is not None:
        predictions = predictions.merge(groups, on="id", how="left")
    out: dict = {}
    for split in EVAL_SPLITS:
        part = predictions[predictions["split"] == split]
        out[split] = frame_metrics(part, names, threshold)
        out[split]["by_source"] = {source: frame_metrics(group, names, threshold)
                                   for source, group in part.groupby("source", sort=True)}
        for column in ([] if groups is None else groups.columns.drop("id")):
            out[split][f"by_{column}"] = {
                str(value): frame_metrics(group, names, threshold)
                for value, group in part.groupby(part[column].fillna("(none)"), sort=True)}
    return out


def with_probs(frame: pd.DataFrame, names, probs: np.ndarray) -> pd.DataFrame:
    frame = frame.copy()
    for k, name in enumerate(names):
        frame[probability_column(name)] = probs[:, k].astype(np.float64)
    return frame


def _probs(frame: pd.DataFrame, names) -> np.ndarray:
    return frame[[probability_column(n) for n in names]].to_numpy(dtype=np.float64)


def calibrate(scored: dict[str, pd.DataFrame], names, settings: EvaluateParams
              ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Fit the temperature on val, apply it to every split; (calibrated frames, the
    `calibration` block of metrics.json: temperature, ECE before/after per split, and the test
    reliability bins before and after)."""
    val = scored["val"]
    if settings.calibration == "temperature":
        fitted = calibration.fit_temperature(val["label"].to_numpy(), _probs(val, names))
    else:
        before = calibration.nll(val["label"].to_numpy(), _probs(val, names))
        fitted = calibration.Temperature(1.0, False, "evaluate.calibration is none", before,
                                         before)
    out, block = {}, {"method": settings.calibration, **fitted.to_dict()}
    for split, frame in scored.items():
        labels, raw = frame["label"].to_numpy(), _probs(frame, names)
        scaled = calibration.scale(raw, fitted.value)
        out[split] = with_probs(frame, names, scaled)
        block[f"{split}_ece_before"] = calibration.ece(labels, raw)
        block[f"{split}_ece_after"] = calibration.ece(labels, scaled)
        if split == "test":
            block["test_bins_before"] = calibration.reliability_bins(labels, raw)
    return out, block


def slice_columns(paths: Paths) -> pd.DataFrame | None:
    """id + the grouping columns the clean manifest carries (contracts.GROUPING_COLUMNS), or
    None when it has none (or is absent, e.g. a test project with shards alone)."""
    if not paths.manifest.exists():
        return None
    present = [c for c in contracts.GROUPING_COLUMNS
               if c in contracts.parquet_columns(paths.manifest)]
    if not present:
        return None
    return pd.read_parquet(paths.manifest, columns=["id", *present])


# ---------------------------------------------------------------- MLflow

def _scalars(data: dict, prefix: str) -> dict[str, float]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}_{key}".replace("/", "_").replace(" ", "_")
        if isinstance(value, dict):
            flat |= _scalars(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            flat[name] = float(value)
    return flat


def _calibration_and_operating_metrics(result: dict) -> dict[str, float]:
    """eval_temperature, eval_{val,test}_ece_{before,after}, and per FPR target
    eval_{val,test}_{recall,fpr}_at_fpr_<target> (+ the test interval's bounds)."""
    found = {}
    block = result.get("calibration", {})
    for key in ("temperature", "val_ece_before", "val_ece_after", "test_ece_before",
                "test_ece_after"):
        if isinstance(block.get(key), (int, float)):
            found[f"eval_{key}"] = float(block[key])
    for point in result.get("operating_points", {}).get("points", []):
        tag = f"at_fpr_{point['fpr_target']:g}"
        if point.get("threshold") is not None:
            found[f"eval_threshold_{tag}"] = float(point["threshold"])
        for split in ("val", "test"):
            for rate in ("recall", "fpr"):
                value = point.get(split, {}).get(rate)
                if isinstance(value, (int, float)):
                    found[f"eval_{split}_{rate}_{tag}"] = float(value)
        for rate in ("recall", "fpr"):
            interval = point.get("test", {}).get(f"{rate}_interval") or {}
            for side in ("lower", "upper"):
                if isinstance(interval.get(side), (int, float)):
                    found[f"eval_test_{rate}_{tag}_{side}"] = float(interval[side])
    return found


def log_to_training_run(paths: Paths, result: dict, plots_dir: Path) -> str:
    """Add evaluation metrics and plots to the training run; returns what happened."""
    run_file = paths.train_dir / "mlflow_run.json"
    if not run_file.exists():
        return f"skipped: {run_file} not found"
    import mlflow
    from mlflow import MlflowClient

    info = json.loads(run_file.read_text())
    try:
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        run_id = info["run_id"]
        metrics_to_log = {k: v for k, v in _scalars(
            {"test": {k: v for k, v in result["test"].items() if not k.startswith("by_")},
             "val": {k: v for k, v in result["val"].items() if not k.startswith("by_")}},
            "eval").items()}
        metrics_to_log |= _calibration_and_operating_metrics(result)
        for key, value in metrics_to_log.items():
            client.log_metric(run_id, key, value)
        client.log_artifacts(run_id, str(plots_dir), "evaluate/plots")
        client.log_artifact(run_id, str(paths.evaluate_dir / "metrics.json"), "evaluate")
    except (mlflow.exceptions.MlflowException, OSError, KeyError) as exc:
        raise StageFailed(f"could not log evaluation to MLflow run from {run_file}: {exc}") \
            from None
    return f"logged to run {run_id}"


# ---------------------------------------------------------------- stage

def run(params: Params, paths: Paths) -> dict:
    if not (paths.model_dir / "config.json").exists():
        raise StageFailed(f"no trained model in {paths.model_dir}: run `mmguard train` first")
    try:
        sizes = read_sizes(paths.shards)
    except DataError as exc:
        raise StageFailed(str(exc)) from None
    if sizes.get("task") != params.task:
        raise StageFailed(f"shards are for task {sizes.get('task')!r}, params.task is "
                          f"{params.task!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(paths.model_dir, device=device)
    model.attach_cache_if_built(paths.embeddings)
    if model.task != params.task:
        raise StageFailed(f"model in {paths.model_dir} is for {model.task!r}, not {params.task!r}")
    names = list(class_names(params.task))

    scored, skipped = {}, {}
    for split in EVAL_SPLITS:
        try:
            scored[split], skipped[split] = score_split(model, paths, split, sizes,
                                                        params.evaluate.batch_size)
        except DataError as exc:
            raise StageFailed(str(exc)) from None
        if scored[split].empty:
            raise StageFailed(f"no decodable {split} samples ({len(skipped[split])} skipped)")

    scored, calibration_block = calibrate(scored, names, params.evaluate)
    threshold, rule, operating = None, "argmax", None
    if len(names) == 2:
        val, test = scored["val"], scored["test"]
        positive = probability_column(names[1])
        threshold, rule = choose_threshold(val["label"].to_numpy(), val[positive].to_numpy(),
                                           params.evaluate)
        settings = params.evaluate
        operating = operating_points.operating_points(
            settings.fpr_targets, settings.primary, val["label"].to_numpy(),
            val[positive].to_numpy(), test["label"].to_numpy(), test[positive].to_numpy(),
            resamples=settings.bootstrap_resamples, alpha=settings.alpha, seed=settings.seed)
    predictions = pd.concat([add_predictions(scored[s], names, threshold) for s in EVAL_SPLITS],
                            ignore_index=True)
    result = all_metrics(predictions, names, threshold, slice_columns(paths))
    result = {"task": params.task, "decision": {"rule": rule, "threshold": threshold},
              **result, "calibration": calibration_block}
    if operating is not None:
        result["operating_points"] = operating

    paths.evaluate_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_with(paths.predictions, lambda tmp: predictions.to_parquet(tmp, index=False))
    atomic.write_text(paths.evaluate_dir / "metrics.json",
                      json.dumps(_json_safe(result), indent=2))
    plots_dir = paths.evaluate_dir / "plots"
    plots.write_plots(predictions[predictions["split"] == "test"], names, plots_dir,
                      uncalibrated=calibration_block["test_bins_before"])
    mlflow_status = log_to_training_run(paths, _json_safe(result), plots_dir)

    index = ShardIndex.from_dict(sizes)
    expected = {s: index.samples(s) for s in EVAL_SPLITS}
    for split in EVAL_SPLITS:  # conservation: every sample is scored or skipped with a reason
        accounted = len(scored[split]) + len(skipped[split])
        if accounted != expected[split]:
            raise StageFailed(f"{split}: sizes.json lists {expected[split]} samples but "
                              f"{len(scored[split])} were scored and {len(skipped[split])} "
                              "skipped")
    stats = {"scored": {s: len(scored[s]) for s in EVAL_SPLITS}, "expected": expected,
             "skipped": {s: [list(x) for x in skipped[s]] for s in EVAL_SPLITS},
             "decision_rule": rule, "threshold": threshold, "mlflow": mlflow_status,
             "embedding_cache": model.cache_report()}
    headline = ("auroc",) if threshold is not None else ("top1", "top2")
    stats["test"] = {k: result["test"].get(k) for k in headline}
    stats["temperature"] = calibration_block["temperature"]
    stats["test_ece"] = {"before": calibration_block["test_ece_before"],
                         "after": calibration_block["test_ece_after"]}
    if operating is not None:
        point = operating_points.primary_point(operating) or {}
        stats["primary_operating_point"] = {
            "fpr_target": point.get("fpr_target"), "threshold": point.get("threshold"),
            "test_recall": point.get("test", {}).get("recall"),
            "test_fpr": point.get("test", {}).get("fpr")}
    atomic.write_text(paths.stats("evaluate"), json.dumps(_json_safe(stats), indent=2))
    return _json_safe(stats)
