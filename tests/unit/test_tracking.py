"""The one MLflow store context: which store a project uses, and that nothing outlives the block."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline import tracking
from pipeline.params import parse_params
from tests.project import project_env
from tests.stores import sqlite_store


def test_tracking_uri_env_override_relative_sqlite_and_file_store(tmp_path, monkeypatch):
    params = parse_params({})
    assert tracking.tracking_uri(params, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(params, tmp_path) == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ValueError, match="file store"):
        tracking.tracking_uri(params, tmp_path)
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_only_an_absent_sqlite_file_counts_as_a_missing_store(tmp_path):
    uri = tracking.tracking_uri(parse_params({}), tmp_path)
    assert tracking.missing_sqlite_store(uri)
    (tmp_path / "mlflow.db").mkdir()  # a folder by that name is no store either
    assert tracking.missing_sqlite_store(uri)
    (tmp_path / "mlflow.db").rmdir()
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert not tracking.missing_sqlite_store(uri)
    assert not tracking.missing_sqlite_store("http://127.0.0.1:5999")


def test_dvc_root_wins_over_the_working_copy_for_relative_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    uri = tracking.tracking_uri(parse_params({}), tmp_path / "main/.dvc/tmp/exps/tmp123")
    assert uri == f"sqlite:///{(tmp_path / 'main').resolve()}/mlflow.db"


def test_store_sets_tracking_and_registry_for_the_block_only(tmp_path):
    params = parse_params({"registry": {"tracking_uri": "sqlite:///inner.db"}})
    before = mlflow.get_tracking_uri()
    with tracking.store(params, tmp_path) as uri:
        assert uri == f"sqlite:///{tmp_path.resolve()}/inner.db"
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
        with tracking.store(parse_params({}), tmp_path / "nested") as nested:
            assert mlflow.get_tracking_uri() == nested
        assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_store_is_restored_when_the_block_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////outer.db")
    with pytest.raises(RuntimeError), tracking.using_uri(f"sqlite:///{tmp_path}/x.db"):
        raise RuntimeError
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////outer.db"
    assert mlflow.get_tracking_uri() == "sqlite:////outer.db"


def test_training_run_leaves_no_store_experiment_or_run_behind(tmp_path, monkeypatch):
    root, workdir = tmp_path / "project", tmp_path / "elsewhere"
    root.mkdir()
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # empty: whatever the run leaves in the working directory shows
    params = parse_params({})
    sqlite_store(root / "mlflow.db")  # the default store, relative to the root
    with tracking.training_run(params, root, run_name="t") as info:
        mlflow.log_metric("x", 1.0)
    assert info["tracking_uri"] == f"sqlite:///{root.resolve()}/mlflow.db"
    assert mlflow.active_run() is None
    assert not {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"} & set(os.environ)
    client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
    assert client.get_run(info["run_id"]).data.metrics == {"x": 1.0}
    assert (root / "mlflow.db").exists()
    assert list(workdir.iterdir()) == []  # no store, mlruns/ or artifacts in the working dir


@pytest.mark.slow  # git + dvc init + an experiment run: tens of seconds on 2 cores
def test_a_temp_dvc_experiment_tracks_into_the_main_workspace_store(tmp_path):
    """`dvc exp run --temp` runs the stage in a throwaway copy under .dvc/tmp/exps; the store it
    resolves must still be the project's mlflow.db, or the experiment's runs vanish with it."""
    seen = tmp_path / "seen.txt"
    project = tmp_path / "project"
    project.mkdir()
    code = ("import os; from pipeline import tracking; from pipeline.params import Params; "
            f"open({str(seen)!r}, 'w').write(os.getcwd() + '\\n' + tracking.tracking_uri(Params()))")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"where": {
        "cmd": f"{sys.executable} -c \"{code}\"", "deps": ["input.txt"]}}}))
    (project / "input.txt").write_text("x\n")
    env = project_env() | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "init"], ["dvc", "exp", "run", "--temp", "-q"]):
        subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    workdir, uri = seen.read_text().splitlines()
    assert Path(workdir).resolve() != project.resolve()  # it did run in a temporary copy
    assert uri == f"sqlite:///{project.resolve()}/mlflow.db"
