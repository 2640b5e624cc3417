"""What the mmguard DAGs share: where the project lives, its params, how a command runs in it.

Tasks shell out to the project's own `mmguard` and `dvc` (its .venv/bin first on PATH) in the
project folder. The project folder comes from the deployment, never from a trigger form:
`MMGUARD_PROJECT_DIR`, else the checkout this file lives in.
"""
from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Asset

PROJECT_DIR = Path(os.environ.get("MMGUARD_PROJECT_DIR", Path(__file__).resolve().parents[1]))
# A checkout is enough for the DAG processor: the project's package is importable from it.
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from pipeline.orchestration.alerts import FailureAlert  # noqa: E402
from pipeline.params import load_params  # noqa: E402

PARAMS = load_params(PROJECT_DIR / "params.yaml")
START_DATE = datetime(2025, 1, 1, tzinfo=timezone.utc)

# The drift → retrain loop: batches landing in data/incoming/ (announced by whoever drops them,
# e.g. `airflow assets materialize` or the REST API; the monitor also looks daily), and the
# monitor's verdict that one drifted, which schedules the retrain.
INCOMING_BATCH = Asset(name="mmguard_incoming_batch", uri=f"file://{PROJECT_DIR}/data/incoming")
DRIFT_DETECTED = Asset(name="mmguard_drift_detected",
                       uri=f"file://{PROJECT_DIR}/artifacts/monitoring/incoming")

DEFAULT_ARGS = {
    "owner": "mmguard",
    "retries": PARAMS.airflow.retries,
    "retry_delay": timedelta(seconds=PARAMS.airflow.retry_delay_s),
    "execution_timeout": timedelta(minutes=PARAMS.airflow.execution_timeout_min),
    "on_failure_callback": [FailureAlert(PARAMS.airflow.smtp_conn_id, PARAMS.airflow.alert_to)],
}

# Two dvc processes in one workspace fail on DVC's repo lock; with --wait-for-lock the second
# one queues behind the first instead.
DVC = "dvc --wait-for-lock"


def project_env() -> dict[str, str]:
    """Variables added to the worker's environment for every task."""
    return {
        "PATH": f"{PROJECT_DIR}/.venv/bin:" + os.environ.get("PATH", "/usr/bin:/bin"),
        "DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
    }


def project_command(task_id: str, command: str, env: dict[str, str] | None = None,
                    **kwargs) -> BashOperator:
    """A bash task run in the project folder; a failing command fails the task."""
    return BashOperator(
        task_id=task_id,
        bash_command="set -euo pipefail\n" + command,
        cwd=str(PROJECT_DIR),
        env={**project_env(), **(env or {})},
        append_env=True,
        **kwargs,
    )
