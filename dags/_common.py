"""What both mmguard DAGs share: where the project lives and how a command runs inside it.

Tasks shell out to the project's own `mmguard` and `dvc` (its .venv/bin first on PATH) in the
project folder, so the Airflow workers only need a checkout of the project, not its imports.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param

# The repo root is this file's grandparent; a deployment points elsewhere with the env var.
PROJECT_DIR = os.environ.get("MMGUARD_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))

START_DATE = datetime(2025, 1, 1, tzinfo=timezone.utc)

DEFAULT_ARGS = {"owner": "mmguard", "retries": 0, "retry_delay": timedelta(minutes=5)}

# Two dvc processes in one workspace fail on DVC's repo lock. Inside a DAG the DVC tasks are
# chained and each DAG allows one active run; across DAGs (retrain vs drift monitor) the global
# --wait-for-lock makes the second process queue behind the first instead of failing.
DVC = "dvc --wait-for-lock"


def project_dir_param() -> Param:
    return Param(PROJECT_DIR, type="string", minLength=1,
                 description="Project checkout to run in (holds params.yaml, dvc.yaml, .venv)")


def project_env() -> dict[str, str]:
    """Variables added to the worker's environment for every task (values are templated)."""
    return {
        "PATH": "{{ params.project_dir }}/.venv/bin:" + os.environ.get("PATH", "/usr/bin:/bin"),
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
        cwd="{{ params.project_dir }}",
        env={**project_env(), **(env or {})},
        append_env=True,
        **kwargs,
    )
