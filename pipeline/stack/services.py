"""The MLflow server and Airflow's processes: their commands, environments and health checks.

`client_env` is what any client of the stack needs (the project's stage tasks, `dvc`, a second
clone): the MLflow URL and login, and the S3 keys. The Airflow processes get it too, so the
tasks their LocalExecutor runs reach MLflow and the DVC remote.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import requests

from pipeline.stack import objectstore, postgres
from pipeline.stack.state import (AIRFLOW_ADMIN, AIRFLOW_DB, LOOPBACK, MLFLOW_ADMIN,
                                  MLFLOW_AUTH_DB, MLFLOW_BUCKET, MLFLOW_DB, MONITORING_BUCKET,
                                  StackState, write_private)

BIN = Path(sys.executable).parent
TELEMETRY_OFF = {"DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                 "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
# Airflow's four processes; each is one `airflow <command>` (serving logs is left to the
# api-server, which reads the shared log folder, so no fixed log-server port is opened).
AIRFLOW_PROCESSES = {
    "airflow-api-server": ["api-server", "--workers", "1"],
    "airflow-scheduler": ["scheduler", "--skip-serve-logs"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer", "--skip-serve-logs"],
}
# Which line of the api-server's /monitor/health answers for which process.
HEALTH_COMPONENT = {"airflow-scheduler": "scheduler", "airflow-dag-processor": "dag_processor",
                    "airflow-triggerer": "triggerer"}


def mlflow_url(state: StackState) -> str:
    return f"http://{LOOPBACK}:{state.ports()['mlflow']}"


def airflow_url(state: StackState) -> str:
    return f"http://{LOOPBACK}:{state.ports()['airflow']}"


def client_env(state: StackState) -> dict[str, str]:
    creds = state.credentials()
    return {
        "MLFLOW_TRACKING_URI": mlflow_url(state),
        "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_TRACKING_PASSWORD": creds["mlflow_admin_password"],
        "AWS_ACCESS_KEY_ID": creds["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["s3_secret_key"],
        "AWS_DEFAULT_REGION": objectstore.REGION,
        # Read by pyarrow's S3 filesystem (the capture log) and boto3; DVC has its own setting.
        "AWS_ENDPOINT_URL": objectstore.endpoint(state),
        # Served traffic is captured here, and the drift monitor and `mmguard drift --since`
        # read it back from here, whichever machine they run on.
        "MMGUARD_MONITORING_URI": f"s3://{MONITORING_BUCKET}/capture",
    }


def _base_env(state: StackState) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(TELEMETRY_OFF)
    return env


# ---- MLflow ---------------------------------------------------------------------------------

def _auth_config(state: StackState) -> Path:
    creds = state.credentials()
    # NO_PERMISSIONS: a user the admin creates sees nothing until granted.
    return write_private(state.data_dir("mlflow") / "basic_auth.ini",
                         "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                         f"database_uri = {postgres.uri(state, MLFLOW_AUTH_DB)}\n"
                         f"admin_username = {MLFLOW_ADMIN}\n"
                         f"admin_password = {creds['mlflow_admin_password']}\n"
                         "authorization_function = "
                         "mlflow.server.auth:authenticate_request_basic_auth\n"
                         "grant_default_workspace_access = false\n"
                         # Each check hashes the password (PBKDF2): seconds on a busy 2-core
                         # box, so a verified login is cached per worker for a while.
                         "auth_cache_ttl_seconds = 300\n")


def mlflow_command(state: StackState) -> list[str]:
    port = state.ports()["mlflow"]
    return [str(BIN / "mlflow"), "server", "--host", LOOPBACK, "--port", str(port),
            "--workers", "1", "--app-name", "basic-auth",
            "--serve-artifacts", "--artifacts-destination", f"s3://{MLFLOW_BUCKET}",
            "--allowed-hosts", f"{LOOPBACK}:{port},localhost:{port}"]


def mlflow_env(state: StackState) -> dict[str, str]:
    creds = state.credentials()
    env = _base_env(state)
    env.update(AWS_ACCESS_KEY_ID=creds["s3_access_key"],
               AWS_SECRET_ACCESS_KEY=creds["s3_secret_key"],
               AWS_DEFAULT_REGION=objectstore.REGION,
               MLFLOW_S3_ENDPOINT_URL=objectstore.endpoint(state),
               # In the environment, not on the command line, where `ps` would show the password.
               MLFLOW_BACKEND_STORE_URI=postgres.uri(state, MLFLOW_DB),
               MLFLOW_AUTH_CONFIG_PATH=str(_auth_config(state)),
               MLFLOW_FLASK_SERVER_SECRET_KEY=creds["mlflow_flask_secret"],
               # The job runner serves GenAI scorer jobs, which this project has none of.
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return env


def mlflow_healthy(state: StackState) -> bool:
    """The server answers and accepts our login (a 401 here means the auth app is broken)."""
    creds = state.credentials()
    try:
        response = requests.get(f"{mlflow_url(state)}/api/2.0/mlflow/experiments/search",
                                params={"max_results": 1}, timeout=30,
                                auth=(MLFLOW_ADMIN, creds["mlflow_admin_password"]))
        return response.status_code == 200
    except requests.RequestException:
        return False


# ---- Airflow --------------------------------------------------------------------------------

def _passwords_file(state: StackState) -> Path:
    return write_private(state.airflow_home / "simple_auth_manager_passwords.json", json.dumps(
        {AIRFLOW_ADMIN: state.credentials()["airflow_admin_password"]}))


def airflow_env(state: StackState) -> dict[str, str]:
    creds = state.credentials()
    env = _base_env(state)
    env.update(client_env(state))
    env.update({
        "AIRFLOW_HOME": str(state.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(state.project / "dags"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor forks this many workers; the DVC tasks run in series anyway.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": creds["airflow_fernet_key"],
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.uri(state, AIRFLOW_DB),
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(state.ports()["airflow"]),
        "AIRFLOW__API__BASE_URL": airflow_url(state),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url(state)}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": creds["airflow_jwt_secret"],
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                       "simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_passwords_file(state)),
        # New DAG files show up within seconds rather than the default five minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        # The deployment, not whoever triggers a run, says which checkout the tasks execute.
        "MMGUARD_PROJECT_DIR": str(state.project),
    })
    return env


def airflow_command(name: str) -> list[str]:
    return [str(BIN / "airflow"), *AIRFLOW_PROCESSES[name]]


def airflow_health(state: StackState) -> dict | None:
    """The api-server's view: metadatabase, scheduler, triggerer and dag_processor heartbeats."""
    try:
        response = requests.get(f"{airflow_url(state)}/api/v2/monitor/health", timeout=5)
        return response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def airflow_component_healthy(state: StackState, name: str) -> bool:
    health = airflow_health(state)
    if health is None:
        return False
    if name == "airflow-api-server":
        return health.get("metadatabase", {}).get("status") == "healthy"
    return (health.get(HEALTH_COMPONENT[name]) or {}).get("status") == "healthy"


def airflow_token(state: StackState) -> str:
    """A JWT for the REST API, from the admin login."""
    response = requests.post(f"{airflow_url(state)}/auth/token", timeout=10,
                             json={"username": AIRFLOW_ADMIN,
                                   "password": state.credentials()["airflow_admin_password"]})
    response.raise_for_status()
    return response.json()["access_token"]
