"""The stack tier: `mmguard stack up` in a throwaway copy of the project, shared by every test of
the tier, and `mmguard stack down` at the end. Run with `make test-stack`."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.stack.services import client_env
from pipeline.stack.state import StackState
from tests.project import BIN, ROOT, SMALL, make_project, project_env
from tests.stack.airflow_api import AirflowApi

# Small data, and no Airflow retries: a failing task fails the run at once.
TINY = {**SMALL, "airflow": {"retries": 0, "retry_delay_s": 5,
                             "stages": {"train": {"retries": 0}}}}


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.stack)


def mmguard(*args: str, cwd: Path, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "mmguard"), *args], cwd=cwd, capture_output=True,
                            text=True, env={**project_env(), **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"mmguard {' '.join(args)} exited {result.returncode}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def commit_all(repo: Path, message: str) -> None:
    for command in (["git", "add", "-A"], ["git", "-c", "user.name=stack-test", "-c",
                                           "user.email=stack-test@localhost", "commit", "-qm",
                                           message, "--allow-empty"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A project copy with the stack up; yields its StackState. Prints the cold start time."""
    project = make_project(tmp_path_factory.mktemp("stack") / "project", TINY)
    shutil.copytree(ROOT / "dags", project / "dags",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".gitignore").write_text("/.stack/\n/data/\n/artifacts/\n/mlflow.db\n")
    commit_all(project, "project under test")
    state = StackState.of(project)
    begin = time.monotonic()
    try:
        up = mmguard("stack", "up", "--root", str(project), cwd=project)
        print(f"\nstack cold start: {time.monotonic() - begin:.1f}s\n{up.stdout}")
        yield state
    finally:
        down = mmguard("stack", "down", "--root", str(project), cwd=project, check=False)
        print(down.stdout, down.stderr)


@pytest.fixture(scope="session")
def airflow(stack) -> AirflowApi:
    return AirflowApi(stack)


@pytest.fixture
def client(stack, monkeypatch):
    """An MLflow client of the stack's server, logged in."""
    from mlflow import MlflowClient

    for key, value in client_env(stack).items():
        monkeypatch.setenv(key, value)
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
