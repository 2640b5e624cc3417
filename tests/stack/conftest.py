"""The stack tier: `mmguard stack up` in a throwaway copy of the project, shared by every test of
the tier, and `mmguard stack down` at the end. Run with `make test-stack`."""
from __future__ import annotations

import os

import pytest

from pipeline.stack.services import client_env
from tests.stack.airflow_api import AirflowApi
from tests.stack.harness import running_stack


@pytest.fixture(scope="session")
def stack():
    with running_stack() as state:
        yield state


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
