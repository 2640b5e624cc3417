"""Registry against real MLflow stores: a SQLite store, and a real `mlflow server` subprocess.

The test split's labels are what model "good" predicts, so "good" scores AUROC 1.0 on it and
model "weak" (another random init) scores near chance: a better and a worse model, for real.
"""
from __future__ import annotations

import json
from importlib import metadata

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline import registry, tracking
from pipeline.paths import Paths
from tests.pipeline.registry_fixtures import (
    free_port, install_candidate, model_dirs, project_params, stop_server, tracking_server,
    write_test_split,
)
from tests.stores import sqlite_store

TASK = "hateful_memes"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    dirs = model_dirs(root, TASK, {"good": 1, "weak": 2})
    return dirs


@pytest.fixture
def project(tmp_path, models):
    paths = Paths(tmp_path)
    write_test_split(paths, TASK, oracle_dir=models["good"])
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  path: data\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: mmguard train\n    outs:\n"
        "    - path: artifacts/model\n      md5: feedbeef.dir\n")
    return paths


def store(uri):
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(client, name):
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def test_gate_promotes_better_rejects_worse_and_failing_checks_then_rolls_back(project, models,
                                                                               capsys):
    params = project_params(project.root, TASK)
    name = registry.model_name(params)
    client = store(params.registry.tracking_uri)

    # 1. the first model becomes champion (even a weak one: there is nothing to beat)
    install_candidate(project, models["weak"])
    v1 = registry.register(params, project)
    assert aliases(client, name) == {"challenger": v1}
    first = registry.promote(params, project)
    assert first.promoted and aliases(client, name)["champion"] == v1

    # 2. a better one replaces it; the old champion is remembered
    install_candidate(project, models["good"], metrics={"auroc": 0.99, "samples": 24})
    v2 = registry.register(params, project)
    decision = registry.promote(params, project)
    assert decision.promoted and decision.challenger_metrics["auroc"] == pytest.approx(1.0)
    assert decision.champion_metrics["auroc"] < 0.95  # the champion re-scored on this test set
    assert aliases(client, name) == {"challenger": v2, "champion": v2, "previous_champion": v1}
    assert client.get_model_version(name, v2).tags["promotion.previous_champion"] == v1

    # 3. a worse one does not, and says why
    install_candidate(project, models["weak"])
    v3 = registry.register(params, project)
    decision = registry.promote(params, project)
    assert not decision.promoted
    assert aliases(client, name)["champion"] == v2
    tags = client.get_model_version(name, v3).tags
    assert tags["gate.decision"] == "rejected" and "FAIL: auroc" in tags["gate.reasons"]
    assert tags["gate.champion_version"] == v2
    assert "NOT promoted" in capsys.readouterr().out

    # 4. as good as the champion but its checks failed: not promoted
    install_candidate(project, models["good"], checks_passed=False)
    v4 = registry.register(params, project)
    decision = registry.promote(params, project)
    assert not decision.promoted
    assert [r for r in decision.reasons if r.startswith("FAIL")] == [
        "FAIL: prediction checks did not pass (or no report was registered)"]
    assert aliases(client, name)["champion"] == v2
    assert client.get_model_version(name, v4).tags["checks.failed_errors"] == "auroc_above_chance"

    # 5. rollback restores the previous champion; v1 had none before it, so the chain ends
    result = registry.rollback(params, project.root)
    assert result == {"model": name, "champion": v1, "replaced": v2, "previous_champion": None}
    assert aliases(client, name) == {"challenger": v4, "champion": v1}
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(params, project.root)


def test_registered_version_carries_signature_requirements_and_lineage(project, models):
    params = project_params(project.root, TASK)
    install_candidate(project, models["good"], metrics={"auroc": 0.91, "samples": 24,
                                                        "by_source": {"x": {"auroc": 1}}})
    version = registry.register(params, project)
    client = store(params.registry.tracking_uri)
    tags = client.get_model_version(registry.model_name(params), version).tags
    assert tags["data.dvc.md5"] == "0123abcd.dir"
    assert tags["dvc.lock.train"] == "artifacts/model:feedbeef.dir"
    assert tags["param.task"] == TASK and tags["param.train.seed"] == "0"
    assert tags["metric.test.auroc"] == "0.91" and "metric.test.by_source.x.auroc" not in tags
    assert tags["checks.passed"] == "true" and "git.revision" in tags

    uri = f"models:/{registry.model_name(params)}/{version}"
    with tracking.store(params):
        info = mlflow.models.get_model_info(uri)
        pins = open(mlflow.pyfunc.get_model_dependencies(uri)).read()
    assert info.signature.inputs.input_names() == ["image", "text"]
    assert info.signature.outputs.input_names() == ["label", "label_index", "prob_not_hateful",
                                                    "prob_hateful"]
    assert f"torch=={metadata.version('torch')}" in pins and "open_clip_torch==" in pins


def test_register_uses_the_training_run_when_it_exists(project, models):
    params = project_params(project.root, TASK)
    client = store(params.registry.tracking_uri)
    experiment = client.create_experiment("train", artifact_location=(
        project.root / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    project.train_dir.mkdir(parents=True)
    (project.train_dir / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}))
    install_candidate(project, models["good"])
    version = registry.register(params, project)
    assert client.get_model_version(registry.model_name(params), version).run_id == run_id


def test_register_and_promote_fail_clearly_without_inputs(project):
    params = project_params(project.root, TASK)
    with pytest.raises(registry.RegistryError, match="run `mmguard train` first"):
        registry.register(params, project)
    with pytest.raises(registry.RegistryError, match="run `mmguard register` first"):
        registry.promote(params, project)


@pytest.mark.slow
def test_against_a_real_tracking_server_and_while_it_is_down(project, models, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    params = project_params(project.root, TASK, tracking_uri=uri)
    name = registry.model_name(params)
    server = tracking_server(tmp_path, port)
    try:
        install_candidate(project, models["weak"])
        v1 = registry.register(params, project)
        assert registry.promote(params, project).promoted
        install_candidate(project, models["good"])
        v2 = registry.register(params, project)
    finally:
        stop_server(server)

    with pytest.raises(registry.RegistryUnavailable, match=f"{uri} is unreachable"):
        registry.promote(params, project)
    with pytest.raises(registry.RegistryUnavailable):
        registry.rollback(params, project.root)

    server = tracking_server(tmp_path, port)  # same backend store: the registry as it was left
    try:
        client = store(uri)
        assert aliases(client, name) == {"champion": v1, "challenger": v2}
        assert "gate.decision" not in client.get_model_version(name, v2).tags
        decision = registry.promote(params, project)  # and it works once the server is back
        assert decision.promoted and aliases(client, name)["champion"] == v2
    finally:
        stop_server(server)


def test_cli_reports_registry_errors_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for uri, command, message in ((sqlite_store(tmp_path / "m.db"), "rollback",
                                   "nothing to roll back to"),
                                  (down, "promote", f"{down} is unreachable")):
        params_file = tmp_path / "params.yaml"
        params_file.write_text(json.dumps({"registry": {"tracking_uri": uri}}))
        result = CliRunner().invoke(app, [command, "--params", str(params_file),
                                          "--root", str(tmp_path)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
