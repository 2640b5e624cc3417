"""drift stage: Evidently drift of current against reference items, as the monitored model sees
them.

Sides of the comparison:
- default (the DVC stage): the clean manifest's `drift.reference_split` against its
  `drift.current_split`;
- explicit manifests (`reference_manifest` / `current_manifest`), each used whole;
- captured traffic (`since`): rows the served model scored in the last `since`, read from the
  monitoring log, against the champion's training reference (`champion_reference`, snapshotted
  at promotion; the clean manifest's reference split before any promotion).
Image paths in any manifest are relative to `paths.root`.

Per side the stage measures three families (see pipeline/drift_features.py): scalar image and
caption features, the monitored model's image and text embeddings (Evidently's EmbeddingsDrift,
one per modality), and prediction / label drift. Every test gives a p-value and
`drift_verdict.verdict` decides at a false-alarm rate of `drift.alpha`, whatever the sizes. A
side with fewer than `drift.min_rows` readable rows gets the verdict "too few rows to judge"
instead of a report.

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

from pipeline import atomic, contracts, drift_features, drift_verdict
from pipeline.errors import StageFailed
from pipeline.monitoring import capture
from pipeline.params import DriftParams, Params
from pipeline.paths import Paths
from pipeline.taxonomy import class_names

# What any compared manifest must hold; the clean manifest's `split` is needed only to pick one.
REQUIRED_COLUMNS = ("id", "image_path", "text")
TOO_FEW = "too few rows to judge"


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
    # captured traffic only: rows the capture writer dropped in the window (it fell behind)
    dropped_rows: int | None = None


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


def _shown(path: Path, root: Path) -> str:
    """A path as drift.json names it: relative to the project root when inside it, so the
    DVC-tracked summary is the same on every machine."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _side(paths: Paths, manifest: Path | None, split: str, role: str, task: str) -> Batch:
    """One side: an explicit manifest whole, else a split of the clean one."""
    if manifest is None:
        frame = read_manifest(paths.manifest, split)
        where = f"split {split!r} of {_shown(paths.manifest, paths.root)}"
    else:
        frame, where = read_manifest(manifest), _shown(manifest, paths.root)
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


def embedding_tests(reference: pd.DataFrame, current: pd.DataFrame,
                    settings: DriftParams) -> dict[str, drift_verdict.EmbeddingTest]:
    """The permutation MMD test of each modality's embeddings (pipeline/drift_verdict.py)."""
    chosen = settings.embeddings
    tests = {}
    for modality in drift_features.MODALITIES:
        columns = [c for c in reference.columns if c.startswith(f"{modality}_emb_")]
        tests[modality] = drift_verdict.mmd_permutation_test(
            reference[columns].to_numpy(), current[columns].to_numpy(), chosen.permutations,
            chosen.seed, drift_verdict.embedding_level(settings), chosen.pca_components)
    return tests


def _column_results(snapshot: dict) -> dict[str, dict]:
    """Per column: Evidently's test, its threshold, p-value and flag (the flag is checked
    against the verdict's by the tests)."""
    columns: dict[str, dict] = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith(":ValueDrift"):
            score = float(metric["value"])
            columns[config["column"]] = {"method": config.get("method"),
                                         "threshold": config.get("threshold"),
                                         "p_value": score if math.isfinite(score) else None}
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift") and params.get("column") in columns:
            columns[params["column"]]["report_drifted"] = test["status"] == "FAIL"
    return columns


def _with_descriptors(frame: pd.DataFrame) -> pd.DataFrame:
    """The side with Evidently's caption descriptors as columns, computed before the report so
    that each family's repeats can be left out of its tests (see _distinct_units)."""
    from evidently import DataDefinition, Dataset

    described = Dataset.from_pandas(
        frame[["id", "text"]].reset_index(drop=True),
        data_definition=DataDefinition(id_column="id", text_columns=["text"]),
        descriptors=drift_features.text_descriptors()).as_dataframe()
    return pd.concat([frame.reset_index(drop=True),
                      described[list(drift_features.TEXT_DESCRIPTORS)]], axis=1)


def _distinct_units(frame: pd.DataFrame, seen: pd.DataFrame,
                    embeddings: dict[str, list[str]]) -> pd.DataFrame:
    """`frame` with each family's repeats blanked (NaN, which Evidently's column tests drop):
    image features counted once per distinct image, caption descriptors once per distinct
    caption, predictions and labels only on rows that share neither their image nor their
    caption with an earlier row (a meme and its confounders answer alike through what they
    share: counted apart they fired the confidence test at 30 rows a side). Images and
    captions are told apart by the model's embeddings of them (in `seen`, the same rows); see
    drift_verdict.first_occurrences."""
    units = frame.copy()
    first = drift_verdict.first_occurrences
    image, text = (first(seen[embeddings[m]].to_numpy()) for m in drift_features.MODALITIES)
    for mask, columns in ((image, drift_features.IMAGE_FEATURES),
                          (text, drift_features.TEXT_DESCRIPTORS),
                          (image & text, [*drift_features.PREDICTION_NUMERICAL,
                                          *drift_features.PREDICTION_CATEGORICAL,
                                          drift_features.LABEL])):
        for column in columns:
            if column in units.columns:
                units[column] = units[column].where(mask)
    return units


def _family(columns: dict[str, dict], names, drift_share: float) -> dict:
    judged = [name for name in names if name in columns]
    drifted = sorted(name for name in judged if columns[name]["drifted"])
    share = len(drifted) / len(judged) if judged else 0.0
    return {"drifted": bool(judged) and share >= drift_share, "drift_share": share,
            "drifted_columns": drifted}


def compare(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftParams,
            out_dir: Path | None) -> dict:
    """Evidently's DataDriftPreset over the columns plus one EmbeddingsDrift per modality, every
    test a p-value at the verdict's corrected level; `drift_verdict.verdict` decides.

    With `out_dir` None nothing is written and the EmbeddingsDrift metrics are left out (their
    t-SNE picture serves only the HTML and costs more than the tests): the verdict is the same,
    which is how `make drift-power` measures the stage's verdict over many seeds."""
    # Evidently takes a long time to import; only this function needs it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    from pipeline.monitoring.evidently_tests import CATEGORICAL_TEST, PermutationMMD

    numerical = [*drift_features.IMAGE_FEATURES, *drift_features.PREDICTION_NUMERICAL]
    categorical = list(drift_features.PREDICTION_CATEGORICAL)
    labelled = all(drift_features.LABEL in side and side[drift_features.LABEL].notna().all()
                   for side in (reference, current))
    if labelled:
        categorical.append(drift_features.LABEL)
    embeddings = {m: [c for c in reference.columns if c.startswith(f"{m}_emb_")]
                  for m in drift_features.MODALITIES}
    report_embeddings = out_dir is not None
    keep = ["id", "text", *numerical, *categorical,
            *(c for cs in embeddings.values() for c in cs if report_embeddings)]
    current_units, reference_units = (
        _distinct_units(_with_descriptors(frame)[[*keep, *drift_features.TEXT_DESCRIPTORS]],
                        frame, embeddings)
        for frame in (current, reference))
    numerical = [*numerical, *drift_features.TEXT_DESCRIPTORS]
    definition = DataDefinition(id_column="id", numerical_columns=numerical,
                                categorical_columns=categorical, text_columns=["text"],
                                embeddings=embeddings if report_embeddings else None)
    tested = [*numerical, *categorical]
    level = drift_verdict.column_level(settings, len(tested))
    tests = embedding_tests(reference, current, settings)
    # Two-sample p-value tests at every size (Evidently's defaults switch to distances above
    # 1,000 rows and use a one-sample chi-square), each at the Bonferroni level.
    metrics = [DataDriftPreset(columns=tested, drift_share=settings.drift_share,
                               num_method="ks", cat_method=CATEGORICAL_TEST,
                               num_threshold=level, cat_threshold=level)]
    if report_embeddings:
        rows = (len(reference), len(current))
        metrics += [EmbeddingsDrift(embeddings_name=m,
                                    drift_method=PermutationMMD.of(tests[m], rows),
                                    tests=[lte(tests[m].critical)])
                    for m in drift_features.MODALITIES]
    snapshot = Report(metrics, include_tests=True).run(
        *(Dataset.from_pandas(frame, data_definition=definition)
          for frame in (current_units, reference_units)))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        # atomic: a killed stage leaves the previous report, never half of one
        atomic.write_with(out_dir / "report.html", lambda tmp: snapshot.save_html(str(tmp)))
        atomic.write_with(out_dir / "report.json", lambda tmp: snapshot.save_json(str(tmp)))

    columns = _column_results(snapshot.dict())
    missing = sorted(set(tested) - set(columns))
    if missing:
        raise StageFailed(f"Evidently gave no drift test for {missing}")
    decided = drift_verdict.verdict({name: columns[name]["p_value"] for name in tested},
                                    {m: t.p_value for m, t in tests.items()}, settings)
    for name in tested:
        columns[name]["drifted"] = name in decided["drifted_columns"]
    embedded = {m: t.as_dict() for m, t in tests.items()}
    families = {
        "embeddings": {"drifted": any(decided["embedding_drifted"].values()),
                       "method": "mmd permutation test", **embedded},
        "scalar": _family(columns, [*drift_features.IMAGE_FEATURES,
                                    *drift_features.TEXT_DESCRIPTORS], settings.drift_share),
        "predictions": _family(columns, [*drift_features.PREDICTION_NUMERICAL,
                                         *drift_features.PREDICTION_CATEGORICAL], 1e-9),
        "labels": (_family(columns, [drift_features.LABEL], 1e-9) if labelled
                   else {"drifted": False, "skipped": "labels missing on a side"}),
    }
    return {"dataset_drift": decided["dataset_drift"], "verdict": None,
            "drift_share": decided["drift_share"], "drifted_columns": decided["drifted_columns"],
            "embedding_drift": {m: t.score for m, t in tests.items()},
            "embedding_p_values": {m: t.p_value for m, t in tests.items()},
            "embedding_drifted": decided["embedding_drifted"], "levels": decided["levels"],
            "families": families, "columns": columns, "threshold": settings.drift_share}


SUMMARY_KEYS = ("dataset_drift", "verdict", "drift_share", "drifted_columns", "embedding_drift",
                "embedding_p_values", "embedding_drifted", "n_reference", "n_current",
                "reference")


def _too_few(reference: Batch, current: Batch, min_rows: int) -> str | None:
    for role, batch in (("reference", reference), ("current", current)):
        if len(batch.rows) < min_rows:
            return (f"{TOO_FEW}: the {role} set has {len(batch.rows)} readable rows "
                    f"({batch.unreadable} unreadable images), fewer than drift.min_rows={min_rows}")
    return None


def _write_verdict_only_reports(out_dir: Path, reason: str) -> None:
    """The report files still exist (DVC declares them) and say why there is no report."""
    from html import escape

    atomic.write_text(
        out_dir / "report.html",
        f"<!doctype html><title>drift</title><h1>No drift report</h1><p>{escape(reason)}</p>\n")
    atomic.write_text(out_dir / "report.json",
                      json.dumps({"verdict": reason, "metrics": []}) + "\n")


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
                  "drifted_columns": [], "embedding_drift": {}, "embedding_p_values": {},
                  "embedding_drifted": {}}
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
    if current.dropped_rows is not None:
        context["dropped_rows"] = current.dropped_rows
    stats = {**result, **counts, **context}
    summary = {key: stats[key] for key in SUMMARY_KEYS if key in stats}
    if "dropped_rows" in stats:  # captured traffic: rows the capture writer had to drop
        summary["dropped_rows"] = stats["dropped_rows"]
    atomic.write_json(out_dir / "drift.json", summary)
    atomic.write_json(out_dir / "stats.json", stats)
    if monitored is not None and settings.log_to_mlflow:
        stats["mlflow_run_id"] = reports.log_drift_reports(params, paths.root, monitored.run_id,
                                                           out_dir, summary)
        # Where the reports went, for whoever reads stats.json next.
        atomic.write_json(out_dir / "stats.json", stats)
    return {**summary, "unreadable_images": context["unreadable_images"],
            "families": {k: v["drifted"] for k, v in result.get("families", {}).items()}}


def traffic_batch(params: Params, root: Path, since: str):
    """The captured traffic of the last `since` as the drift stage's current side."""
    cutoff = datetime.now(timezone.utc) - capture.parse_since(since)
    uri = capture.log_location(params.monitoring, root)
    frame = capture.read_log(uri, cutoff)
    where = f"traffic captured since {cutoff:%Y-%m-%dT%H:%M:%SZ} in {uri}"
    dropped = capture.dropped_rows(uri, cutoff)
    notes = ([f"the capture writer dropped {dropped} rows in this window (it fell behind); "
              "they are not in the comparison"] if dropped else [])
    if frame.empty:
        return Batch(pd.DataFrame(columns=["id", "text"]), [], where, notes=notes,
                     dropped_rows=dropped)
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
    if versions:
        notes.insert(0, f"captured traffic was scored by {', '.join(versions)}")
    return Batch(rows, images, where, unreadable=captured - len(keep),
                 predictions=predictions, notes=notes, dropped_rows=dropped)


def champion_reference(paths: Paths) -> Path:
    """The champion's training reference, snapshotted at promotion (`mmguard monitor
    reference`, pipeline/orchestration/incoming.py:save_reference)."""
    return paths.artifacts / "monitoring" / "reference" / "manifest.parquet"


def run(params: Params, paths: Paths, reference_manifest: Path | None = None,
        current_manifest: Path | None = None, out_dir: Path | None = None,
        since: str | None = None) -> dict:
    settings = params.drift
    champion = since is not None and reference_manifest is None
    if champion:
        # Traffic is what the champion serves: judge it against the data the champion trained
        # on, which after a refused retrain is no longer the workspace's clean manifest.
        snapshot = champion_reference(paths)
        reference_manifest = snapshot if snapshot.exists() else None
    reference = _side(paths, reference_manifest, settings.reference_split, "reference",
                      params.task)
    if champion and reference_manifest is not None:
        reference.where = f"the champion's training reference {reference.where}"
    elif champion:
        missing = _shown(snapshot, paths.root)
        reference.where += f" (no champion reference at {missing}: nothing promoted yet)"
    if since is not None:
        if current_manifest is not None:
            raise StageFailed("give either a current manifest or --since, not both")
        current = traffic_batch(params, paths.root, since)
    else:
        current = _side(paths, current_manifest, settings.current_split, "current", params.task)
    return judge(params, paths, reference, current,
                 paths.drift_dir if out_dir is None else out_dir)
