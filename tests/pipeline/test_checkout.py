"""`mmguard checkout --version N` on a real DVC project with a folder remote: register version 1,
change the data and params and register version 2, lose the workspace's data, outputs and DVC
cache (what a fresh clone lacks), then check out each version and get its exact files back."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.params import load_params
from pipeline.paths import Paths
from pipeline.registry import lineage
from tests.pipeline.registry_fixtures import clear_tracking_env, migrated_store, model_dirs

# The stage stands in for training: the tiny model plus a file that depends on data and params,
# so each version's model has its own content hash.
BUILD = """\
import hashlib, pathlib, shutil, sys, yaml
out = pathlib.Path("artifacts/model")
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(sys.argv[1], out)
seed = yaml.safe_load(open("params.yaml"))["train"]["seed"]
data = hashlib.sha256(pathlib.Path("data/notes.txt").read_bytes()).hexdigest()
(out / "provenance.txt").write_text(f"{data} seed={seed}\\n")
"""
PINNED = ("dvc.lock", "data.dvc", "params.yaml")


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result.stdout.strip()


def dvc(*args: str, cwd: Path) -> str:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


def produce_version(project: Path, notes: str, seed: int) -> dict:
    """Change the data and params, reproduce, push, register; what that version pinned."""
    (project / "data" / "notes.txt").write_text(notes)
    (project / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"tracking_uri": "sqlite:///mlflow.db"}, "train": {"seed": seed}}))
    dvc("add", "--quiet", "data", cwd=project)
    dvc("repro", "--quiet", cwd=project)
    dvc("push", "--quiet", cwd=project)
    paths = Paths(project)
    result = registry.register(load_params(project / "params.yaml"), paths,
                               project / "params.yaml")
    assert result["created"]
    return {"version": result["version"], "notes": notes,
            "model": lineage.content_hash(paths.model_dir),
            **{name: (project / name).read_bytes() for name in PINNED}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    clear_tracking_env()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = model_dirs(tmp_path / "models", "hateful_memes", {"tiny": 1})["tiny"]
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "build_model.py").write_text(BUILD)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": f"{sys.executable} build_model.py {model}",
        "deps": ["data", "build_model.py"], "params": ["train.seed"],
        "outs": ["artifacts/model"]}}}))
    (project / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    migrated_store(project / "mlflow.db")  # params name it relatively: sqlite:///mlflow.db
    sh("git", "init", "-q", cwd=project)
    sh("git", "config", "user.email", "test@example.invalid", cwd=project)
    sh("git", "config", "user.name", "test", cwd=project)
    dvc("init", "--quiet", cwd=project)
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-q", "-m", "project", cwd=project)
    return project


@pytest.mark.slow
def test_checkout_restores_each_registered_version_on_a_fresh_workspace(project):
    first = produce_version(project, "version one data\n", seed=1)
    second = produce_version(project, "version two data, changed\n", seed=2)
    assert first["model"] != second["model"] and first["dvc.lock"] != second["dvc.lock"]
    head = sh("git", "rev-parse", "HEAD", cwd=project)

    # what a fresh clone lacks: the data, every stage output and the DVC cache
    for folder in ("data", "artifacts", ".dvc/cache"):
        shutil.rmtree(project / folder)

    for wanted in (first, second):
        result = CliRunner().invoke(app, ["checkout", "--version", wanted["version"],
                                          "--params", str(project / "params.yaml"),
                                          "--root", str(project)])
        assert result.exit_code == 0, result.output
        printed = json.loads(result.output[result.output.index("{"):])
        assert printed["dvc"] == "pull" and printed["model_dir"] == "matches"
        assert sorted(printed["restored"]) == sorted(PINNED)
        for name in PINNED:
            assert (project / name).read_bytes() == wanted[name], name
        assert (project / "data" / "notes.txt").read_text() == wanted["notes"]
        assert lineage.content_hash(Paths(project).model_dir) == wanted["model"]
        dvc("status", "--quiet", cwd=project)  # exit 0: workspace matches the restored dvc.lock

    # without a default remote it restores from the local cache (both versions are in it now)
    dvc("remote", "default", "--unset", cwd=project)
    result = CliRunner().invoke(app, ["checkout", "--version", first["version"], "--params",
                                      str(project / "params.yaml"), "--root", str(project)])
    assert result.exit_code == 0, result.output
    assert '"dvc": "checkout"' in result.output
    assert (project / "data" / "notes.txt").read_text() == first["notes"]
    assert lineage.content_hash(Paths(project).model_dir) == first["model"]

    # it never commits: HEAD is where it was
    assert sh("git", "rev-parse", "HEAD", cwd=project) == head
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{project / 'mlflow.db'}")
    for wanted in (first, second):
        tags = client.get_model_version("mmguard-hateful_memes", wanted["version"]).tags
        for name in PINNED:
            assert tags[f"repro.{name}.sha256"] == hashlib.sha256(wanted[name]).hexdigest()


def test_checkout_of_an_unknown_version_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(json.dumps(
        {"registry": {"tracking_uri": migrated_store(tmp_path / "m.db")}}))
    result = CliRunner().invoke(app, ["checkout", "--version", "7", "--params",
                                      str(tmp_path / "params.yaml"), "--root", str(tmp_path)])
    assert result.exit_code == 1 and "version 7" in result.output.lower(), result.output
    assert "Traceback" not in result.output
