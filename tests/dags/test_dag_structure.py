"""The DAGs as Airflow parses them (no run, no metadata DB): the retrain DAG's stage tasks and
edges are dvc.yaml's stage graph as DVC itself builds it, GPU routing, per-stage limits from
params, the gate branch, the drift → retrain Asset loop and the failure alerts."""
from __future__ import annotations

import shutil

import pytest
import yaml
from dvc.repo import Repo

from pipeline.params import load_params
from tests.dags.airflow_child import DESCRIBE, REPO, run_child

OUTSIDE_STAGES = {"fetch", "track_data", "register", "gate", "promote", "keep_champion", "push",
                  "summary"}


@pytest.fixture(scope="module")
def dags(tmp_path_factory):
    result = run_child(DESCRIBE, REPO, tmp_path_factory.mktemp("airflow_home"))
    assert result["import_errors"] == {}
    return result["dags"]


def dvc_graph(root) -> dict[str, list[str]]:
    """stage -> the stages it reads from, from DVC's own graph (`dvc dag`), not ours."""
    with Repo(str(root)) as repo:
        graph = repo.index.graph
        # DVC addresses a stage relative to the working directory (`../x/dvc.yaml:train` when
        # the tests run elsewhere); the stage name is what follows the colon.
        stages = {_name(node): sorted(_name(dep) for dep in graph.successors(node)
                                      if not dep.addressing.endswith(".dvc"))
                  for node in graph.nodes if not node.addressing.endswith(".dvc")}
    return stages


def _name(node) -> str:
    return node.addressing.rsplit(":", 1)[-1]


def _upstream(tasks: dict, task_id: str) -> list[str]:
    return sorted(t for t, info in tasks.items() if task_id in info["downstream"])


def test_retrain_stage_tasks_and_edges_are_dvc_yaml_graph(dags):
    tasks = dags["mmguard_retrain"]["tasks"]
    expected = dvc_graph(REPO)
    assert set(tasks) == set(expected) | OUTSIDE_STAGES
    for stage, parents in expected.items():
        upstream = [t for t in _upstream(tasks, stage) if t not in OUTSIDE_STAGES]
        assert upstream == parents, stage
    # Stages without a stage upstream start after the data is tracked; the last ones feed register.
    assert _upstream(tasks, "ingest") == ["track_data"]
    leaves = sorted(s for s in expected if not any(s in p for p in expected.values()))
    assert _upstream(tasks, "register") == leaves


def test_a_stage_added_to_dvc_yaml_becomes_a_task(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(REPO / "params.yaml", project)
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"]["report"] = {"cmd": "mmguard report", "deps": ["artifacts/checks/report.json"],
                                "outs": ["artifacts/report/index.html"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    tasks = run_child(DESCRIBE, project, tmp_path / "home")["dags"]["mmguard_retrain"]["tasks"]
    assert _upstream(tasks, "report") == ["checks"]
    assert "report" in _upstream(tasks, "register") and "checks" not in _upstream(tasks, "register")


def test_train_runs_in_the_gpu_pool_on_the_gpu_queue(dags):
    tasks = dags["mmguard_retrain"]["tasks"]
    assert (tasks["train"]["pool"], tasks["train"]["queue"]) == ("gpu", "gpu")
    others = {t: (i["pool"], i["queue"]) for t, i in tasks.items() if t != "train"}
    assert set(others.values()) == {("default_pool", "default")}


def test_each_stage_has_retries_and_timeout_from_params(dags):
    tasks = dags["mmguard_retrain"]["tasks"]
    settings = load_params(REPO / "params.yaml").airflow
    for stage in dvc_graph(REPO):
        retries, timeout_min = settings.for_stage(stage)
        assert (tasks[stage]["retries"], tasks[stage]["timeout_s"]) == (retries, timeout_min * 60)
    # params.yaml gives train its own limits
    assert (tasks["train"]["retries"], tasks["train"]["timeout_s"]) == (2, 240 * 60)


def test_gate_is_a_branch_and_recording_steps_run_either_way(dags):
    tasks = dags["mmguard_retrain"]["tasks"]
    assert tasks["register"]["downstream"] == ["gate"]
    assert tasks["gate"]["downstream"] == ["keep_champion", "promote"]
    assert _upstream(tasks, "push") == ["keep_champion", "promote"]
    assert tasks["push"]["downstream"] == ["summary"]
    for recording in ("push", "summary"):
        assert tasks[recording]["trigger_rule"] == "none_failed_min_one_success"


def test_the_project_folder_is_not_a_trigger_param(dags):
    assert dags["mmguard_retrain"]["params"] == {"source": []}
    assert dags["mmguard_drift_monitor"]["params"] == {}
    assert dags["mmguard_review"]["params"] == {}


def test_drift_monitor_and_retrain_are_linked_by_assets(dags):
    monitor, retrain = dags["mmguard_drift_monitor"], dags["mmguard_retrain"]
    assert monitor["schedule"] == retrain["schedule"] == "AssetOrTimeSchedule"
    assert monitor["assets"] == ["mmguard_incoming_batch"]
    assert retrain["assets"] == ["mmguard_drift_detected"]
    tasks = monitor["tasks"]
    assert tasks["announce_drift"]["outlets"] == ["mmguard_drift_detected"]
    assert tasks["check_drift"]["downstream"] == ["alert_traffic_drift", "announce_drift",
                                                  "no_drift"]
    assert not any(t["outlets"] for name, t in tasks.items() if name != "announce_drift")
    for dag in (monitor, retrain):
        assert (dag["catchup"], dag["max_active_runs"]) == (False, 1)


def test_review_imports_into_the_asset_the_drift_monitor_watches(dags):
    review = dags["mmguard_review"]
    assert review["schedule"] == "CronTriggerTimetable"
    assert (review["catchup"], review["max_active_runs"]) == (False, 1)
    tasks = review["tasks"]
    assert tasks["exports_waiting"]["downstream"] == ["import_returned"]
    assert tasks["import_returned"]["outlets"] == ["mmguard_incoming_batch"]
    assert tasks["build_queue"]["outlets"] == [] and tasks["build_queue"]["downstream"] == []
    assert dags["mmguard_drift_monitor"]["assets"] == ["mmguard_incoming_batch"]


def test_every_task_alerts_on_failure(dags):
    for dag in dags.values():
        for task_id, task in dag["tasks"].items():
            if task_id != "no_drift":  # an EmptyOperator never runs, so never fails
                assert task["alerts"] == ["FailureAlert"], task_id
