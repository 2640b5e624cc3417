"""drift stage: Evidently drift of current against reference items, as the monitored model sees
them.

Sides of the comparison:
- default (the DVC stage): the clean manifest's `drift.reference_split` against its
  `drift.current_split`;
- explicit manifests (`reference_manifest` / `current_manifest`), each used whole;
- captured traffic (`since`): rows the served model scored in the last `since`, read from the
  monitoring log, against the reference split the champion was trained on.
Image paths in any manifest are relative to `paths.root`.

Per side the stage measures three families (see pipeline/drift_features.py): scalar image and
caption features, the monitored model's image and text embeddings (Evidently's EmbeddingsDrift,
one per modality, method from params), and prediction / label drift. A side with fewer than
`drift.min_rows` readable rows gets the verdict "too few rows to judge" instead of a report.

Writes report.html, report.json (the Evidently snapshot), drift.json (the summary DVC tracks as a
metric) and stats.json (per-column scores, per-family verdicts, counts) into `out_dir` (default
artifacts/drift), and logs them to MLflow on the monitored model's run.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import contracts, drift_features
from pipeline.errors import StageFailed
from pipeline.monitoring import capture
from pipeline.params import DriftParams, Params
from pipeline.paths import Paths
from pipeline.taxonomy import class_names

# What any compared manifest must hold; the clean manifest's `split` is needed only to pick one.
REQUIRED_COLUMNS = ("id", "image_path", "text")
TOO_FEW = "too few rows to judge"
# Evidently's own default threshold per method; drift is a score above it.
METHOD_THRESHOLDS = {"model": 0.55, "mmd": 0.015, "ratio": 0.2, "distance": 0.2}


@dataclass
class Batch:
    """One side of the comparison: readable rows, their decoded images, and what was dropped."""

    rows: pd.DataFrame  # id, text, optional label (class name), IMAGE_FEATURES
    images: list[Image.Image]
    where: str
    unreadable: int = 0
    # pred_label / pred_confidence the served model answered (captured traffic only)
    predictions: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def read_manifest(path: Path, split: str | None = None) -> pd.DataFrame:
    """The manifest's rows (only `split` when given); fails clearly on a missing file or column."""
    if not path.exists():
        raise StageFailed(f"manifest {path} not found (run ingest and dedupe first)")
    frame = pd.read_parquet(path)
    needed = [*REQUIRED_COLUMNS, *(["split"] if split is not None else [])]
    contracts.require(frame, contracts.MANIFEST, stage="drift", path=path, columns=needed)
    if split is not None:
        frame = frame[frame["split"] == split]
    return frame.reset_index(drop=True)


def label_names(labels: pd.Series, task: str, where: str) -> pd.Series:
    """Labels as class names of `task`; a label outside its label space is an error, because
    comparing another task's labels would report a meaningless (total) label drift."""
    names = list(class_names(task))
    present = labels.dropna()
    # Parquet turns an int column with gaps into floats: 1.0 is still class index 1.
    if present.map(lambda v: isinstance(v, (int, np.integer, float, np.floating))
                   and float(v).is_integer()).all():
        bad = sorted({int(v) for v in present if not 0 <= int(v) < len(names)})
        if bad:
            raise StageFailed(f"{where}: label indices {bad[:10]} are outside task {task!r} "
                              f"({len(names)} classes)")
        return labels.map(lambda v: names[int(v)] if pd.notna(v) else None)
    bad = sorted({str(v) for v in present if str(v) not in names})
    if bad:
        raise StageFailed(f"{where}: labels {bad[:10]} are not classes of task {task!r} "
                          f"({names}); is this another task's data?")
    return labels.map(lambda v: str(v) if pd.notna(v) else None)


def manifest_batch(manifest: pd.DataFrame, root: Path, where: str, task: str) -> Batch:
    """Decode every image once (for both its statistics and its embedding); unreadable ones are
    dropped from the comparison and counted."""
    rows, images = [], []
    labels = label_names(manifest["label"], task, where) if "label" in manifest else None
    for index, item in enumerate(manifest.itertuples(index=False)):
        image = drift_features.load_image(root / str(item.image_path))
        if image is None:
            continue
        images.append(image)
        row = {"id": str(item.id), "text": "" if pd.isna(item.text) else str(item.text)}
        if labels is not None:
            row["label"] = labels.iloc[index]
        rows.append({**row, **drift_features.image_stats(image)})
    return Batch(pd.DataFrame(rows), images, where, unreadable=len(manifest) - len(rows))


def _side(paths: Paths, manifest: Path | None, split: str, role: str, task: str) -> Batch:
    """One side: an explicit manifest whole, else a split of the clean one."""
    if manifest is None:
        frame, where = read_manifest(paths.manifest, split), f"split {split!r} of {paths.manifest}"
    else:
        frame, where = read_manifest(manifest), str(manifest)
    if frame.empty:
        raise StageFailed(f"the {role} set is empty ({where}); nothing to compare")
    return manifest_batch(frame, paths.root, where, task)


def features(batch: Batch, model, class_list: list[str], batch_size: int = 64) -> pd.DataFrame:
    """The batch's rows with the model's predictions and embeddings joined on."""
    from pipeline.monitoring.embeddings import model_view

    view = model_view(model, batch.images, batch.rows["text"].tolist(), batch_size)
    seen = drift_features.model_features(view.probs, view.image, view.text, class_list)
    if batch.predictions is not None:  # what the served model answered, not a re-score
        seen[list(drift_features.PREDICTION_CATEGORICAL + drift_features.PREDICTION_NUMERICAL)] = \
            batch.predictions.reset_index(drop=True)
    return pd.concat([batch.rows.reset_index(drop=True), seen], axis=1)


def embedding_method(settings: DriftParams):
    from evidently.metrics.embeddings import (DistanceDriftMethod, MMDDriftMethod,
                                              ModelDriftMethod, RatioDriftMethod)

    chosen = settings.embeddings
    kind = {"model": ModelDriftMethod, "mmd": MMDDriftMethod, "ratio": RatioDriftMethod,
            "distance": DistanceDriftMethod}[chosen.method]
    # No bootstrap: the verdict is then exactly "score above threshold", which the report's test
    # states and drift.json repeats.
    return kind(threshold=threshold(settings), pca_components=chosen.pca_components)


def threshold(settings: DriftParams) -> float:
    chosen = settings.embeddings
    return METHOD_THRESHOLDS[chosen.method] if chosen.threshold is None else chosen.threshold


def _results(snapshot: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per-column and per-embedding method, score and Evidently's own drift verdict."""
    columns: dict[str, dict] = {}
    embeddings: dict[str, dict] = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        kind = config.get("type", "")
        if kind.endswith(":ValueDrift"):
            score = float(metric["value"])
            columns[config["column"]] = {"method": config.get("method"),
                                         "threshold": config.get("threshold"),
                                         "score": score if math.isfinite(score) else None}
        elif kind.endswith(":EmbeddingsDrift"):
            embeddings[config["embeddings_name"]] = {"score": float(metric["value"])}
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        kind = params.get("type", "")
        if kind.endswith(":ValueDrift") and params.get("column") in columns:
            columns[params["column"]]["drifted"] = test["status"] == "FAIL"
        elif kind.endswith(":EmbeddingsDrift") and params.get("embeddings_name") in embeddings:
            embeddings[params["embeddings_name"]]["drifted"] = test["status"] == "FAIL"
    unjudged = [name for name, result in {**columns, **embeddings}.items()
                if "drifted" not in result]
    if unjudged:
        raise StageFailed(f"Evidently gave no drift verdict for {unjudged}")
    return columns, embeddings


def _family(columns: dict[str, dict], names, drift_share: float) -> dict:
    judged = [name for name in names if name in columns]
    drifted = sorted(name for name in judged if columns[name]["drifted"])
    share = len(drifted) / len(judged) if judged else 0.0
    return {"drifted": bool(judged) and share >= drift_share, "drift_share": share,
            "drifted_columns": drifted}


def compare(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftParams,
            out_dir: Path) -> dict:
    """Evidently's DataDriftPreset over the columns plus one EmbeddingsDrift per modality."""
    # Evidently takes a long time to import; only this function needs it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    numerical = [*drift_features.IMAGE_FEATURES, *drift_features.PREDICTION_NUMERICAL]
    categorical = list(drift_features.PREDICTION_CATEGORICAL)
    labelled = all(drift_features.LABEL in side and side[drift_features.LABEL].notna().all()
                   for side in (reference, current))
    if labelled:
        categorical.append(drift_features.LABEL)
    embeddings = {m: [c for c in reference.columns if c.startswith(f"{m}_emb_")]
                  for m in drift_features.MODALITIES}
    definition = DataDefinition(id_column="id", numerical_columns=numerical,
                                categorical_columns=categorical, text_columns=["text"],
                                embeddings=embeddings)
    keep = ["id", "text", *numerical, *categorical, *(c for cs in embeddings.values() for c in cs)]
    tested = [*numerical, *drift_features.TEXT_DESCRIPTORS, *categorical]
    limit = threshold(settings)
    metrics = [DataDriftPreset(columns=tested, drift_share=settings.drift_share),
               *(EmbeddingsDrift(embeddings_name=m, drift_method=embedding_method(settings),
                                 tests=[lte(limit)]) for m in drift_features.MODALITIES)]
    datasets = [Dataset.from_pandas(frame[keep].reset_index(drop=True), data_definition=definition,
                                    descriptors=drift_features.text_descriptors())
                for frame in (current, reference)]
    snapshot = Report(metrics, include_tests=True).run(*datasets)
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out_dir / "report.html"))
    snapshot.save_json(str(out_dir / "report.json"))

    columns, embedded = _results(snapshot.dict())
    families = {
        "embeddings": {"drifted": any(e["drifted"] for e in embedded.values()),
                       "method": settings.embeddings.method, "threshold": limit, **embedded},
        "scalar": _family(columns, [*drift_features.IMAGE_FEATURES,
                                    *drift_features.TEXT_DESCRIPTORS], settings.drift_share),
        "predictions": _family(columns, [*drift_features.PREDICTION_NUMERICAL,
                                         *drift_features.PREDICTION_CATEGORICAL], 1e-9),
        "labels": (_family(columns, [drift_features.LABEL], 1e-9) if labelled
                   else {"drifted": False, "skipped": "labels missing on a side"}),
    }
    drifted = sorted(name for name, result in columns.items() if result["drifted"])
    share = len(drifted) / len(columns)
    return {"dataset_drift": families["embeddings"]["drifted"] or share >= settings.drift_share,
            "verdict": None, "drift_share": share, "drifted_columns": drifted,
            "embedding_drift": {m: embedded[m]["score"] for m in embedded},
            "embedding_drifted": {m: embedded[m]["drifted"] for m in embedded},
            "families": families, "columns": columns, "threshold": settings.drift_share}


SUMMARY_KEYS = ("dataset_drift", "verdict", "drift_share", "drifted_columns", "embedding_drift",
                "embedding_drifted", "n_reference", "n_current")


def _too_few(reference: Batch, current: Batch, min_rows: int) -> str | None:
    for role, batch in (("reference", reference), ("current", current)):
        if len(batch.rows) < min_rows:
            return (f"{TOO_FEW}: the {role} set has {len(batch.rows)} readable rows "
                    f"({batch.unreadable} unreadable images), fewer than drift.min_rows={min_rows}")
    return None


def _write_verdict_only_reports(out_dir: Path, reason: str) -> None:
    """The report files still exist (DVC declares them) and say why there is no report."""
    from html import escape

    (out_dir / "report.html").write_text(
        f"<!doctype html><title>drift</title><h1>No drift report</h1><p>{escape(reason)}</p>\n")
    (out_dir / "report.json").write_text(json.dumps({"verdict": reason, "metrics": []}) + "\n")


def judge(params: Params, paths: Paths, reference: Batch, current: Batch, out_dir: Path) -> dict:
    """Compare two batches and write drift.json and stats.json; the short summary."""
    settings = params.drift
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"n_reference": len(reference.rows), "n_current": len(current.rows)}
    context = {"reference": reference.where, "current": current.where,
               "unreadable_images": {"reference": reference.unreadable,
                                     "current": current.unreadable},
               "notes": reference.notes + current.notes}
    reason = _too_few(reference, current, settings.min_rows)
    if reason is not None:
        # A verdict, not a crash: drift on a handful of rows is noise either way.
        result = {"dataset_drift": False, "verdict": reason, "drift_share": 0.0,
                  "drifted_columns": [], "embedding_drift": {}, "embedding_drifted": {}}
        monitored = None
        _write_verdict_only_reports(out_dir, reason)
    else:
        from pipeline.monitoring import embeddings, reports

        monitored = embeddings.load_monitored_model(params, paths)
        class_list = list(monitored.model.class_names)
        if class_list != list(class_names(params.task)):
            raise StageFailed(f"the monitored model ({monitored.source}) classifies "
                              f"{class_list}, not task {params.task!r}")
        result = compare(features(reference, monitored.model, class_list),
                         features(current, monitored.model, class_list), settings, out_dir)
        result["verdict"] = "drift" if result["dataset_drift"] else "no drift"
        context["model"] = monitored.source
    stats = {**result, **counts, **context}
    summary = {key: stats[key] for key in SUMMARY_KEYS}
    (out_dir / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    if monitored is not None and settings.log_to_mlflow:
        stats["mlflow_run_id"] = reports.log_drift_reports(params, paths.root, monitored.run_id,
                                                           out_dir, summary)
        # Where the reports went, for whoever reads stats.json next.
        (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return {**summary, "unreadable_images": context["unreadable_images"],
            "families": {k: v["drifted"] for k, v in result.get("families", {}).items()}}


def traffic_batch(params: Params, root: Path, since: str):
    """The captured traffic of the last `since` as the drift stage's current side."""
    cutoff = datetime.now(timezone.utc) - capture.parse_since(since)
    uri = capture.log_location(params.monitoring, root)
    frame = capture.read_log(uri, cutoff)
    where = f"traffic captured since {cutoff:%Y-%m-%dT%H:%M:%SZ} in {uri}"
    if frame.empty:
        return Batch(pd.DataFrame(columns=["id", "text"]), [], where)
    label_names(frame["prediction"], params.task, where)  # another task's model: stop here
    images, keep, captured = [], [], len(frame)
    for index, data in enumerate(frame["thumbnail"]):
        try:
            with Image.open(io.BytesIO(data)) as image:
                images.append(image.convert("RGB"))
                keep.append(index)
        except (OSError, ValueError, TypeError):
            continue
    frame = frame.iloc[keep].reset_index(drop=True)
    rows = frame[["text", *drift_features.IMAGE_FEATURES]].copy()
    rows.insert(0, "id", [f"traffic:{i}" for i in range(len(frame))])
    predictions = pd.DataFrame({"pred_label": frame["prediction"].astype(str),
                                "pred_confidence": frame["confidence"].astype(float)})
    versions = sorted({f"{n} v{v}" for n, v in zip(frame["model_name"], frame["model_version"])})
    notes = [f"captured traffic was scored by {', '.join(versions)}"] if versions else []
    return Batch(rows, images, where, unreadable=captured - len(keep),
                 predictions=predictions, notes=notes)


def run(params: Params, paths: Paths, reference_manifest: Path | None = None,
        current_manifest: Path | None = None, out_dir: Path | None = None,
        since: str | None = None) -> dict:
    settings = params.drift
    reference = _side(paths, reference_manifest, settings.reference_split, "reference",
                      params.task)
    if since is not None:
        if current_manifest is not None:
            raise StageFailed("give either a current manifest or --since, not both")
        current = traffic_batch(params, paths.root, since)
    else:
        current = _side(paths, current_manifest, settings.current_split, "current", params.task)
    return judge(params, paths, reference, current,
                 paths.drift_dir if out_dir is None else out_dir)
