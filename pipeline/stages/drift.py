"""drift stage: an Evidently data-drift report of current against reference items.

By default the reference is the clean manifest's `drift.reference_split` and the current set its
`drift.current_split`. The drift monitor compares other pairs (last month's manifest against a
newer batch) by passing `reference_manifest` / `current_manifest` explicitly; an explicit
manifest is used whole. Image paths in any manifest are relative to `paths.root`.

Writes report.html, report.json (the Evidently snapshot), drift.json (the summary metric DVC
tracks) and stats.json (per-column scores and counts) into `out_dir` (default artifacts/drift).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from pipeline import contracts, drift_features
from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.paths import Paths

MANIFEST_COLUMNS = ("id", "source", "split", "image_path", "text", "label")


def read_manifest(path: Path, split: str | None = None) -> pd.DataFrame:
    """The manifest's rows (only `split` when given); fails clearly on a missing file or column."""
    if not path.exists():
        raise StageFailed(f"manifest {path} not found (run ingest and dedupe first)")
    frame = pd.read_parquet(path)
    contracts.require(frame, contracts.MANIFEST, stage="drift", path=path,
                      columns=MANIFEST_COLUMNS)
    if split is not None:
        frame = frame[frame["split"] == split]
    return frame.reset_index(drop=True)


def _coverage(features: pd.DataFrame) -> float:
    if "pred_label" not in features.columns or features.empty:
        return 0.0
    return float(features["pred_label"].notna().mean())


def choose_columns(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[list, list, str]:
    """Numerical and categorical columns to test, and whether prediction features are in.

    Predictions usually exist for the evaluated split only; comparing a scored set with an
    unscored one would report the missing values as drift, so the prediction features join the
    report only when every item on both sides was scored.
    """
    numerical = list(drift_features.NUMERICAL_FEATURES)
    categorical = list(drift_features.CATEGORICAL_FEATURES)
    ref_cov, cur_cov = _coverage(reference), _coverage(current)
    if "pred_label" not in reference.columns:
        return numerical, categorical, "skipped: no predictions file"
    if ref_cov < 1.0 or cur_cov < 1.0:
        return numerical, categorical, (f"skipped: predictions cover {ref_cov:.0%} of reference "
                                        f"and {cur_cov:.0%} of current")
    numerical += drift_features.PREDICTION_NUMERICAL
    categorical += drift_features.PREDICTION_CATEGORICAL
    return numerical, categorical, "included"


def _column_results(snapshot: dict) -> dict[str, dict]:
    """Per-column method, score, threshold and Evidently's own drift verdict."""
    columns: dict[str, dict] = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith(":ValueDrift"):
            score = float(metric["value"])
            columns[config["column"]] = {"method": config.get("method"),
                                         "threshold": config.get("threshold"),
                                         "score": score if math.isfinite(score) else None}
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift") and params.get("column") in columns:
            columns[params["column"]]["drifted"] = test["status"] == "FAIL"
    unjudged = [name for name, result in columns.items() if "drifted" not in result]
    if unjudged:
        raise StageFailed(f"Evidently gave no drift verdict for columns {unjudged}")
    return columns


def compare(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float,
            out_dir: Path) -> dict:
    """Run Evidently's DataDriftPreset on two feature frames; write the report and drift.json."""
    # Evidently takes a long time to import; only this function needs it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numerical, categorical, prediction_note = choose_columns(reference, current)
    definition = DataDefinition(id_column="id", numerical_columns=numerical,
                                categorical_columns=categorical)
    keep = ["id", *numerical, *categorical]
    report = Report([DataDriftPreset(columns=numerical + categorical, drift_share=drift_share)],
                    include_tests=True)
    snapshot = report.run(Dataset.from_pandas(current[keep], data_definition=definition),
                          Dataset.from_pandas(reference[keep], data_definition=definition))
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out_dir / "report.html"))
    snapshot.save_json(str(out_dir / "report.json"))

    columns = _column_results(snapshot.dict())
    drifted = sorted(name for name, result in columns.items() if result["drifted"])
    share = len(drifted) / len(columns)
    summary = {"drift_share": share, "drifted_columns": drifted,
               "dataset_drift": share >= drift_share,
               "n_reference": len(reference), "n_current": len(current)}
    (out_dir / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "threshold": drift_share, "prediction_features": prediction_note,
            "columns": columns}


def _features(manifest: pd.DataFrame, role: str, where: str, paths: Paths,
              predictions: pd.DataFrame | None) -> pd.DataFrame:
    if manifest.empty:
        raise StageFailed(f"the {role} set is empty ({where}); nothing to compare")
    return drift_features.feature_frame(manifest, paths.root, predictions)


def _side(paths: Paths, manifest: Path | None, split: str) -> tuple[pd.DataFrame, str]:
    """One side of the comparison: an explicit manifest whole, else a split of the clean one."""
    if manifest is None:
        return read_manifest(paths.manifest, split), f"split {split!r} of {paths.manifest}"
    return read_manifest(manifest), str(manifest)


def run(params: Params, paths: Paths, reference_manifest: Path | None = None,
        current_manifest: Path | None = None, out_dir: Path | None = None) -> dict:
    settings = params.drift
    reference_rows, reference_where = _side(paths, reference_manifest, settings.reference_split)
    current_rows, current_where = _side(paths, current_manifest, settings.current_split)

    predictions = pd.read_parquet(paths.predictions) if paths.predictions.exists() else None
    try:
        reference = _features(reference_rows, "reference", reference_where, paths, predictions)
        current = _features(current_rows, "current", current_where, paths, predictions)
    except ValueError as exc:  # a predictions file that breaks its contract
        raise StageFailed(str(exc)) from None

    out_dir = paths.drift_dir if out_dir is None else out_dir
    result = compare(reference, current, settings.drift_share, out_dir)
    unreadable = {role: int(frame["brightness"].isna().sum())
                  for role, frame in (("reference", reference), ("current", current))}
    stats = {**result, "reference": reference_where, "current": current_where,
             "unreadable_images": unreadable}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return {key: stats[key] for key in ("dataset_drift", "drift_share", "drifted_columns",
                                        "n_reference", "n_current", "prediction_features",
                                        "unreadable_images")}


def _main() -> None:
    """`python -m pipeline.stages.drift --reference A --current B --out DIR`: compare any two
    manifests (the drift-monitor DAG uses this; `mmguard drift` runs the default split pair)."""
    import argparse

    from pipeline.params import load_params

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--current", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        result = run(load_params(args.params), Paths(args.root), args.reference, args.current,
                     args.out)
    except StageFailed as exc:
        raise SystemExit(f"drift failed: {exc}") from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    _main()
