"""MLflow set-up shared by train (runs, metrics, artifacts) and the registry.

The tracking URI is $MLFLOW_TRACKING_URI when set, else `registry.tracking_uri` (default
`sqlite:///mlflow.db`). A relative SQLite path is taken relative to the project root, not the
working directory, so every stage and the DAG see one store. Under DVC the project root is
$DVC_ROOT, which DVC sets to the main workspace even when a stage runs in an experiment's
temporary copy (`dvc exp run --temp/--queue`), so queued experiments keep their runs. The file
store is never used: MLflow ≥ 3.13 refuses it. Artifacts of a local store go to
`<root>/mlartifacts`.

Every MLflow call runs inside `store(params, root)`: it points MLflow's process-wide tracking and
registry URIs at the store for the block and puts them back afterwards, so nothing leaks into
the rest of the process (an Airflow worker, a test session).
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


# Set by `mlflow.set_tracking_uri`/`set_registry_uri` as well, so `store` saves and restores them.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def project_root(root: str | Path | None = None) -> Path:
    """Where relative store paths live: DVC's main workspace when a DVC stage runs us."""
    return Path(os.environ.get("DVC_ROOT") or root or ".").resolve()


def tracking_uri(params: Params, root: str | Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    if uri.startswith(SQLITE_PREFIX):
        path = uri[len(SQLITE_PREFIX):]
        # sqlite:////abs/path has an absolute path after the prefix; a relative one is ours
        if not path.startswith("/") and path != ":memory:":
            uri = SQLITE_PREFIX + str((project_root(root) / path).resolve())
    if uri.startswith("file:") or "://" not in uri and not uri.startswith(SQLITE_PREFIX):
        raise ValueError(f"tracking URI {uri!r} is a file store, which MLflow ≥ 3.13 refuses; "
                         "use sqlite:///mlflow.db or an http(s):// server")
    return uri


def _is_local_store(uri: str) -> bool:
    return uri.startswith(SQLITE_PREFIX)


def missing_sqlite_store(uri: str) -> bool:
    """A SQLite store whose file does not exist yet: readers must not open it, since opening it
    creates an empty store (and registry)."""
    return _is_local_store(uri) and not Path(uri[len(SQLITE_PREFIX):]).is_file()


@contextmanager
def using_uri(uri: str) -> Iterator[str]:
    """MLflow's tracking and registry URIs point at `uri` inside the block, as before after it."""
    import mlflow

    saved = {key: os.environ.get(key) for key in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        # None unsets MLflow's global and its environment variable
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def store(params: Params, root: str | Path | None = None) -> Iterator[str]:
    """The project's MLflow store for the block (tracking and registry); yields its URI."""
    with using_uri(tracking_uri(params, root)) as uri:
        yield uri


def experiment_id(params: Params, uri: str, root: str | Path | None = None) -> str:
    """The id of `registry.experiment` in the store at `uri`, created when missing. Callers pass
    it to start_run: mlflow.set_experiment would export MLFLOW_EXPERIMENT_ID to the process."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = params.registry.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if _is_local_store(uri):  # else the server decides where artifacts live
            location = (project_root(root) / ARTIFACTS_FOLDER).as_uri()
        return client.create_experiment(name, artifact_location=location)
    return experiment.experiment_id


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
    """Inside `store`: start (or continue, when `resume_run_id` exists in this store) a run with
    the params logged; yields {"run_id", "experiment_id", "tracking_uri"}."""
    import mlflow

    with store(params, root) as uri:
        experiment = experiment_id(params, uri, root)
        resuming = run_exists(resume_run_id)
        with mlflow.start_run(run_id=resume_run_id if resuming else None,
                              experiment_id=None if resuming else experiment,
                              run_name=None if resuming else run_name) as run:
            if not resuming:  # params are immutable once logged
                mlflow.log_params(params_for_logging(params))
                mlflow.set_tags({"task": params.task, "stage": "train"})
            yield {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                   "tracking_uri": uri}


def log_epoch(metrics: dict, epoch: int) -> None:
    """Numeric values of an epoch's metrics row, with step = epoch."""
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
    mlflow.log_metrics(numeric, step=epoch)


def write_run_info(info: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
