"""Drift reports into MLflow: on the monitored model's run when it is known, else on a
`drift-monitor` run, so each check's HTML and JSON sit next to the model they judge."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.params import Params


def log_drift_reports(params: Params, root: Path, run_id: str | None, out_dir: Path,
                      summary: dict) -> str:
    """Log out_dir's reports under `drift/<UTC time>/` and the scores as metrics; the run id."""
    import mlflow

    from pipeline import tracking

    with tracking.store(params, root) as uri:
        experiment_id = tracking.experiment_id(params, uri, root)
        resuming = tracking.run_exists(run_id)
        with mlflow.start_run(run_id=run_id if resuming else None,
                              experiment_id=None if resuming else experiment_id,
                              run_name=None if resuming else "drift-monitor") as run:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            mlflow.log_artifacts(str(out_dir), artifact_path=f"drift/{stamp}")
            metrics = {"drift.share": summary["drift_share"],
                       "drift.dataset_drift": float(summary["dataset_drift"]),
                       **{f"drift.embedding.{m}": s
                          for m, s in summary["embedding_drift"].items()},
                       **{f"drift.embedding.{m}.p_value": p
                          for m, p in summary.get("embedding_p_values", {}).items()}}
            # One step per check, so repeated checks on one run form a time series.
            mlflow.log_metrics(metrics, step=int(time.time()))
            return run.info.run_id
