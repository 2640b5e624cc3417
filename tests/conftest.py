"""Shared test set-up: telemetry off, MLflow isolated per test, and the test tiers.

Tiers (README, "Tests and benchmarks"; one make target each):
- `make test`: everything not marked `slow` — pure unit tests, stages on tiny inputs, one tiny
  trained model per session (tests/fixtures.py). Each test takes seconds.
- `make test-slow`: tests marked `slow` — whole-pipeline DVC runs, `dag.test()` runs, real
  `mlflow server`/`mlflow models serve` processes, torchrun. Minutes each.
- `make quality`, `make bench`: tests/quality and tests/bench (not collected by the two above).
"""
from __future__ import annotations

import os
import sys

import pytest

# Telemetry off before any of the libraries is imported (the Makefile sets the same).
for _key, _value in {
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # No capture log from tests that serve a model; the capture tests switch it on.
    "MMGUARD_CAPTURE": "0",
}.items():
    os.environ.setdefault(_key, _value)

# A store or experiment chosen in the shell (or DVC's project root, when pytest runs inside a DVC
# stage) would redirect the stores the tests name in their params.
MLFLOW_STATE = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID",
                "MLFLOW_RUN_ID", "DVC_ROOT")
for _key in MLFLOW_STATE:
    os.environ.pop(_key, None)


@pytest.fixture(autouse=True)
def isolated_mlflow():
    """Each test starts and ends with no process-wide MLflow store, experiment or run, so a test
    that forgets `tracking.store` cannot write into the next test's store."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for key in MLFLOW_STATE:
        os.environ.pop(key, None)


# What a checkout holds after `make run`, planted in every test's working directory: a test that
# reads or asserts on the working directory's state (`Path("mlflow.db")`, a default `--root .`)
# fails every time, not only in a checkout where `make run` has been. Nothing lands in the
# checkout either: whatever a test writes to a relative path lands in its own folder.
PLANTED_CHECKOUT_STATE = ("mlflow.db", "artifacts/", "airflow_home/", "data/", "mlruns/",
                          "mlartifacts/")
# Tiers that drive whole checkouts of their own (copies, clones, torchrun from the checkout).
OWN_WORKING_DIRECTORY = ("stack", "bench", "quality")


@pytest.fixture(autouse=True)
def working_directory_with_stale_state(request, tmp_path_factory, monkeypatch):
    if request.node.path.parent.name in OWN_WORKING_DIRECTORY:
        return None
    folder = tmp_path_factory.mktemp("cwd")
    for name in PLANTED_CHECKOUT_STATE:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "STALE").write_text("left by an earlier run; no test reads this\n")
        else:
            (folder / name).write_text("not a database: left by an earlier run\n")
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """(paths, summary) of the session's one tiny training run (tests/trained.py). Read only."""
    from tests.trained import train_once

    return train_once(tmp_path_factory.mktemp("trained_tiny"))


def pytest_sessionfinish(session, exitstatus):
    """pytest exits 5 when a selection collects nothing. `.ci/run` sets EMPTY_TIER_OK=1 for the
    optional tiers, where an empty tier (no slow tests in this checkout) is not a failure."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and os.environ.get("EMPTY_TIER_OK") == "1":
        print("no tests in this tier")
        session.exitstatus = pytest.ExitCode.OK
