"""Registry against real MLflow stores: a SQLite store, and a real `mlflow server` subprocess.

The test split's labels are what model "good" predicts, so "good" scores AUROC 1.0 on it and
model "weak" (another random init) scores near chance: a better and a worse model, for real.
"""
from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline import registry, tracking
from pipeline.registry import lineage
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
    dirs = model_dirs(root, TASK, {"good": 1, "weak": 2, "other": 3})
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


def versions(client, name):
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def test_gate_promotes_better_rejects_worse_and_failing_checks_then_rolls_back(project, models,
                                                                               capsys):
    params = project_params(project.root, TASK)
    name = registry.model_name(params)
    client = store(params.registry.tracking_uri)

    # 1. the first model becomes champion (even a weak one: there is nothing to beat);
    #    registering it again (a retried task) gives back the same version
    install_candidate(project, models["weak"])
    v1 = registry.register(params, project)["version"]
    assert registry.register(params, project) == {"version": v1, "created": False}
    assert versions(client, name) == [v1]
    assert aliases(client, name) == {"challenger": v1}
    first = registry.promote(params, project)
    assert first.promoted and first.champion_seen is None
    assert aliases(client, name)["champion"] == v1

    # 2. a better one replaces it; the old champion is remembered
    install_candidate(project, models["good"], metrics={"auroc": 0.99, "samples": 24})
    v2 = registry.register(params, project)["version"]
    decision = registry.promote(params, project)
    assert decision.promoted and decision.challenger_metrics["auroc"] == pytest.approx(1.0)
    assert decision.champion_metrics["auroc"] < 0.95  # the champion re-scored on this test set
    assert aliases(client, name) == {"challenger": v2, "champion": v2, "previous_champion": v1}
    assert client.get_model_version(name, v2).tags["promotion.previous_champion"] == v1

    # 3. the worse model again: no new version, it is @challenger again and the gate keeps v2
    install_candidate(project, models["weak"])
    assert registry.register(params, project) == {"version": v1, "created": False}
    decision = registry.promote(params, project)
    assert not decision.promoted and decision.challenger == v1
    assert aliases(client, name)["champion"] == v2
    tags = client.get_model_version(name, v1).tags
    assert tags["gate.decision"] == "keep" and "FAIL: auroc" in tags["gate.reasons"]
    assert tags["gate.champion_version"] == v2
    assert "keep" in capsys.readouterr().out

    # 4. its checks failed: not promoted, although its scores are within a wide tolerance
    #    (min_delta -1: the bootstrap rule's widest non-inferiority margin)
    lenient = project_params(project.root, TASK, regression_tolerance=1.0, min_delta=-1.0)
    install_candidate(project, models["other"], checks_passed=False)
    v3 = registry.register(lenient, project)["version"]
    decision = registry.promote(lenient, project)
    assert not decision.promoted
    assert [r for r in decision.reasons if r.startswith("FAIL")] == [
        "FAIL: prediction checks did not pass (or no report was registered)"]
    assert aliases(client, name)["champion"] == v2
    assert client.get_model_version(name, v3).tags["checks.failed_errors"] == "auroc_above_chance"

    # 5. rollback restores the previous champion and marks the demoted one; v1 had none before
    #    it, so the chain ends
    result = registry.rollback(params, project)
    assert result == {"model": name, "champion": v1, "replaced": v2, "previous_champion": None}
    assert aliases(client, name) == {"challenger": v3, "champion": v1}
    assert client.get_model_version(name, v2).tags["rolled_back_to"] == v1
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(params, project)

    # 6. the rolled-back model registered again is refused, though it beats the champion...
    install_candidate(project, models["good"])
    assert registry.register(params, project) == {"version": v2, "created": False}
    decision = registry.gate(params, project)
    assert decision.decision == "keep" and "was rolled back" in decision.reasons[0]
    assert client.get_model_version(name, v2).tags["gate.decision"] == "keep"
    # ... unless asked explicitly; promoting it clears the mark
    assert registry.promote(params, project, allow_rolled_back=True).promoted
    assert aliases(client, name) == {"challenger": v2, "champion": v2, "previous_champion": v1}
    assert "rolled_back_to" not in client.get_model_version(name, v2).tags

    # 7. equal scores: a different model that predicts exactly like the champion is not shown
    #    to be better, so the bootstrap rule keeps the champion (the point-estimate rule gave a
    #    tie to the challenger); a non-inferiority margin (min_delta < 0) lets it through
    twin = project.root / "twin"
    shutil.copytree(models["good"], twin)
    (twin / "NOTE").write_text("same weights, other content hash\n")
    install_candidate(project, twin)
    v4 = registry.register(params, project)["version"]
    decision = registry.gate(params, project)
    assert not decision.promoted and decision.challenger_metrics == decision.champion_metrics
    assert decision.evidence["delta"]["auroc"]["lower"] == 0.0
    assert any("not shown to be better than the champion" in r for r in decision.reasons)
    assert decision.evidence["point_estimate_rule"]["promote"]
    assert any("a tie goes to the challenger" in r
               for r in decision.evidence["point_estimate_rule"]["reasons"])
    margin = project_params(project.root, TASK, min_delta=-0.01)
    assert registry.promote(margin, project).promoted

    # 8. rolling back a version that is also @challenger takes the alias away
    registry.rollback(params, project)
    assert aliases(client, name) == {"champion": v2, "previous_champion": v1}
    assert client.get_model_version(name, v4).tags["rolled_back_to"] == v2
    with pytest.raises(registry.RegistryError, match="no @challenger"):
        registry.gate(params, project)


def test_registered_version_carries_signature_requirements_and_lineage(project, models):
    params = project_params(project.root, TASK)
    install_candidate(project, models["good"], metrics={"auroc": 0.91, "samples": 24,
                                                        "by_source": {"x": {"auroc": 1}}})
    version = registry.register(params, project)["version"]
    client = store(params.registry.tracking_uri)
    tags = client.get_model_version(registry.model_name(params), version).tags
    assert tags["data.dvc.md5"] == "0123abcd.dir"
    assert tags["dvc.lock.train"] == "artifacts/model:feedbeef.dir"
    assert tags["param.task"] == TASK and tags["param.train.seed"] == "0"
    assert tags["metric.test.auroc"] == "0.91" and "metric.test.by_source.x.auroc" not in tags
    assert tags["checks.passed"] == "true" and "git.revision" in tags
    # reproducibility: the pinning files' hashes, and the files themselves on the model's run
    assert tags["model.content_sha256"] == lineage.content_hash(project.model_dir)
    assert tags["repro.dvc.lock.sha256"] == lineage.sha256_file(project.root / "dvc.lock")
    assert tags["repro.data.dvc.sha256"] == lineage.sha256_file(project.root / "data.dvc")
    assert tags["repro.params.yaml.sha256"] == "missing"  # this project has none
    logged = mlflow.artifacts.download_artifacts(
        run_id=client.get_model_version(registry.model_name(params), version).run_id,
        artifact_path=tags["repro.artifact_path"], dst_path=str(project.root / "dl"),
        tracking_uri=params.registry.tracking_uri)
    assert sorted(p.name for p in Path(logged).iterdir()) == ["data.dvc", "dvc.lock"]
    assert (Path(logged) / "dvc.lock").read_bytes() == (project.root / "dvc.lock").read_bytes()

    uri = f"models:/{registry.model_name(params)}/{version}"
    with tracking.store(params):
        info = mlflow.models.get_model_info(uri)
        pins = open(mlflow.pyfunc.get_model_dependencies(uri)).read()
        config = mlflow.models.Model.load(uri).flavors["python_function"]["config"]
    assert info.signature.inputs.input_names() == ["image", "text"]
    assert info.signature.outputs.input_names() == ["label", "label_index", "prob_not_hateful",
                                                    "prob_hateful", "model_version", "decision"]
    assert f"torch=={metadata.version('torch')}" in pins and "open_clip_torch==" in pins
    # the served operating point: tags, and the model's config (what the served model applies)
    assert (tags["operating.threshold"], tags["operating.fpr_target"],
            tags["operating.temperature"]) == ("1.0", "0.05", "1.0")
    assert config["operating"] == {"temperature": 1.0, "threshold": 1.0, "fpr_target": 0.05}


def test_register_uses_the_training_run_when_it_exists(project, models):
    params = project_params(project.root, TASK)
    client = store(params.registry.tracking_uri)
    experiment = client.create_experiment("train", artifact_location=(
        project.root / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    project.train_dir.mkdir(parents=True)
    (project.train_dir / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}))
    install_candidate(project, models["good"])
    version = registry.register(params, project)["version"]
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
        v1 = registry.register(params, project)["version"]
        assert registry.promote(params, project).promoted
        install_candidate(project, models["good"])
        v2 = registry.register(params, project)["version"]
    finally:
        stop_server(server)

    with pytest.raises(registry.RegistryUnavailable, match=f"{uri} is unreachable"):
        registry.promote(params, project)
    with pytest.raises(registry.RegistryUnavailable):
        registry.rollback(params, project)

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


def test_cli_contract_register_gate_promote(project, models):
    """What the DAG relies on: register prints {"version", "created"}; gate --out writes the
    decision and exits 0 either way; promote --decision applies it with compare-and-set."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = project_params(project.root, TASK)
    params_file = project.root / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    client, name = store(params.registry.tracking_uri), registry.model_name(params)

    def mmguard(*args):
        return CliRunner().invoke(app, [*args, "--params", str(params_file),
                                        "--root", str(project.root)])

    def gate_file(label):
        out = project.root / f"{label}.json"
        result = mmguard("gate", "--out", str(out))
        assert result.exit_code == 0, result.output
        decision = json.loads(out.read_text())
        assert all(reason in result.stdout for reason in decision["reasons"])  # printed too
        return out, decision

    install_candidate(project, models["weak"])
    first, again = mmguard("register"), mmguard("register")
    assert json.loads(first.stdout) == {"version": "1", "created": True}, first.output
    assert json.loads(again.stdout) == {"version": "1", "created": False}, again.output
    path1, d1 = gate_file("d1")
    assert (d1["decision"], d1["name"], d1["challenger"], d1["champion_seen"]) == (
        "promote", name, "1", None)
    assert mmguard("promote", "--decision", str(path1)).exit_code == 0
    assert aliases(client, name)["champion"] == "1"

    install_candidate(project, models["good"])
    assert json.loads(mmguard("register").stdout) == {"version": "2", "created": True}
    path2, d2 = gate_file("d2")
    assert d2["decision"] == "promote" and d2["champion_seen"] == "1"
    # a stale decision (scored when there was no champion) is refused, in one line
    stale = mmguard("promote", "--decision", str(path1))
    assert stale.exit_code == 1 and stale.output.startswith("refused: @champion of")
    assert stale.output.count("\n") == 1 and aliases(client, name)["champion"] == "1"
    assert mmguard("promote", "--decision", str(path2)).exit_code == 0
    assert aliases(client, name) == {"challenger": "2", "champion": "2", "previous_champion": "1"}

    install_candidate(project, models["weak"])
    assert json.loads(mmguard("register").stdout) == {"version": "1", "created": False}
    path3, d3 = gate_file("d3")  # a refusal is a normal outcome: exit 0 ...
    assert d3["decision"] == "keep" and any(r.startswith("FAIL: auroc") for r in d3["reasons"])
    tags = client.get_model_version(name, "1").tags
    assert tags["gate.decision"] == "keep" and tags["gate.reasons"] == " | ".join(d3["reasons"])
    assert mmguard("promote", "--decision", str(path3)).exit_code == 0  # ... and moves nothing
    assert aliases(client, name)["champion"] == "2"
    assert mmguard("promote").exit_code == 1  # plain promote keeps its exit code for scripts
    broken = project.root / "broken.json"
    broken.write_text("{}")
    result = mmguard("promote", "--decision", str(broken))
    assert result.exit_code == 1 and "not a gate decision" in result.output
