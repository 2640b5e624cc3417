"""MLflow set-up shared by train (runs, metrics, artifacts) and the registry.

The tracking URI is $MLFLOW_TRACKING_URI when set, else `registry.tracking_uri` (default
`sqlite:///mlflow.db`). A relative SQLite path is taken relative to the project root, not the
working directory, so every stage and the DAG see one store. The file store is never used: MLflow
≥ 3.13 refuses it. Artifacts of a local store go to `<root>/mlartifacts`.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.params import Params

SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_FOLDER = "mlartifacts"
# MLflow refuses longer param values
MAX_PARAM_CHARS = 6000


def tracking_uri(params: Params, root: str | Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    if uri.startswith(SQLITE_PREFIX):
        path = uri[len(SQLITE_PREFIX):]
        # sqlite:////abs/path has an absolute path after the prefix; a relative one is ours
        if not path.startswith("/") and path != ":memory:":
            uri = SQLITE_PREFIX + str((Path(root or ".") / path).resolve())
    if uri.startswith("file:") or "://" not in uri and not uri.startswith(SQLITE_PREFIX):
        raise ValueError(f"tracking URI {uri!r} is a file store, which MLflow ≥ 3.13 refuses; "
                         "use sqlite:///mlflow.db or an http(s):// server")
    return uri


def _is_local_store(uri: str) -> bool:
    return uri.startswith(SQLITE_PREFIX)


def set_up(params: Params, root: str | Path | None = None) -> str:
    """Point MLflow at the store and the experiment (created when missing); its id."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    name = params.registry.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if _is_local_store(uri):  # else the server decides where artifacts live
            location = (Path(root or ".") / ARTIFACTS_FOLDER).resolve().as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 1e-3}} → {"train.lr": "0.001"}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def params_for_logging(params: Params) -> dict[str, str]:
    return flatten(params.model_dump(mode="json", by_alias=True))


def run_exists(run_id: str | None) -> bool:
    if not run_id:
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


@contextmanager
def training_run(params: Params, root: str | Path | None = None, resume_run_id: str | None = None,
                 run_name: str | None = None) -> Iterator[dict]:
    """Start (or continue, when `resume_run_id` exists in this store) a run with the params
    logged; yields {"run_id", "experiment_id", "tracking_uri"}."""
    import mlflow

    experiment_id = set_up(params, root)
    resuming = run_exists(resume_run_id)
    with mlflow.start_run(run_id=resume_run_id if resuming else None,
                          experiment_id=None if resuming else experiment_id,
                          run_name=None if resuming else run_name) as run:
        if not resuming:  # params are immutable once logged
            mlflow.log_params(params_for_logging(params))
            mlflow.set_tags({"task": params.task, "stage": "train"})
        yield {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
               "tracking_uri": mlflow.get_tracking_uri()}


def log_epoch(metrics: dict, epoch: int) -> None:
    """Numeric values of an epoch's metrics row, with step = epoch."""
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
    mlflow.log_metrics(numeric, step=epoch)


def write_run_info(info: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
