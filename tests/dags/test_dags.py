"""The two DAGs: they import cleanly, their task graphs are as designed, and real `dag.test()` runs
on small temp projects end as they should.

Airflow reads its configuration when first imported, so everything Airflow happens in one child
process with AIRFLOW_HOME (and a SQLite metadata DB) under tmp_path; this test process never
imports airflow. The child runs `driver.py` below and prints one JSON result line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.params import parse_params
from tests.data.test_drift import _item, _write_rows

# Every dag.test() run shells out to real dvc/mmguard/Evidently: minutes, not seconds.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

DRIVER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from airflow.dag_processing.dagbag import BundleDagBag

    dags_dir = Path(sys.argv[1])
    runs = json.loads(sys.argv[2])
    # The dag-processor parses a bundle this way; it also puts the folder on sys.path.
    bag = BundleDagBag(dag_folder=str(dags_dir), bundle_path=dags_dir, bundle_name="dags-folder")
    result = {"import_errors": {Path(k).name: v for k, v in bag.import_errors.items()}, "dags": {},
              "runs": []}
    for dag_id, dag in bag.dags.items():
        result["dags"][dag_id] = {
            "schedule": str(dag.schedule), "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params.keys()),
            "downstream": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}}
    for run in runs:
        dag = bag.get_dag(run["dag_id"])
        dagrun = dag.test(run_conf=run["conf"], mark_success_pattern=run.get("mark_success"))
        result["runs"].append({
            "name": run["name"], "state": str(dagrun.state),
            "tasks": {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}})
    print("RESULT " + json.dumps(result))
''')


def _airflow_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def _write_params(root: Path, overrides: dict) -> None:
    """A complete params.yaml: DVC needs every key a stage declares to be present in the file."""
    full = parse_params(overrides).model_dump(mode="json", by_alias=True)
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))


def _drift_project(root: Path) -> dict[str, Path]:
    """A project holding three manifests: a reference, a look-alike, and a brighter, wordier one."""
    root.mkdir(parents=True)
    (root / ".venv").symlink_to(VENV_BIN.parent)
    rng = np.random.default_rng(7)
    items = [_item(rng) for _ in range(90)]
    manifests = {"reference": _write_rows(root, items[:45], "train", "ref"),
                 "similar": _write_rows(root, items[45:], "test", "sim"),
                 "shifted": _write_rows(root, items[:45], "test", "new", brightness=80,
                                        stretch_words=True)}
    paths = {}
    for name, rows in manifests.items():
        paths[name] = root / "manifests" / f"{name}.parquet"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(paths[name])
    # The default mode runs the DVC drift stage over the clean manifest's splits.
    clean = root / "artifacts" / "dedupe" / "manifest.parquet"
    clean.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(manifests["reference"] + manifests["similar"]).to_parquet(clean)
    _write_params(root, {"drift": {"drift_share": 0.2}})
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"drift": {
        "cmd": "mmguard drift", "deps": ["artifacts/dedupe/manifest.parquet"],
        "params": ["drift"], "outs": ["artifacts/drift/report.html", "artifacts/drift/report.json"],
        "metrics": [{"artifacts/drift/drift.json": {"cache": False}},
                    {"artifacts/drift/stats.json": {"cache": False}}]}}}))
    return paths


def _retrain_project(root: Path) -> None:
    """A fresh project: small synthetic data and a one-stage pipeline (ingest) so `dvc repro`
    really runs yet stays cheap; its .venv is this checkout's, as on a deployed worker."""
    root.mkdir(parents=True)
    (root / ".venv").symlink_to(VENV_BIN.parent)
    _write_params(root, {"synthetic": {
        "items_per_task": 60, "image_min_side": 32, "image_max_side": 48,
        "plant_exact_duplicates": 1, "plant_near_duplicates": 1, "plant_broken": 1}})
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": {
        "cmd": "mmguard ingest", "deps": ["data"], "params": ["task", "ingest"],
        "outs": ["artifacts/ingest/manifest.parquet", "artifacts/ingest/quarantine.parquet",
                 "artifacts/ingest/images"],
        "metrics": [{"artifacts/ingest/stats.json": {"cache": False}}]}}}))


def _dvc_init(root: Path, env: dict[str, str]) -> None:
    subprocess.run([str(VENV_BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, env=env,
                   check=True)


@pytest.fixture(scope="module")
def airflow_result(tmp_path_factory):
    base = tmp_path_factory.mktemp("dags")
    env = _airflow_env(base / "airflow_home")
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=600)

    drift_root = base / "drift_project"
    manifests = _drift_project(drift_root)
    _dvc_init(drift_root, env)
    retrain_root = base / "retrain_project"
    _retrain_project(retrain_root)
    _dvc_init(retrain_root, env)

    def conf(**manifests):
        # Every param explicit: dag.test() runs share one DAG object in the driver, and a
        # value left out could be carried over from the previous run's conf.
        return {"project_dir": str(drift_root), "fail_on_drift": True,
                "reference_manifest": str(manifests.get("reference_manifest", "")),
                "current_manifest": str(manifests.get("current_manifest", ""))}

    runs = [
        {"name": "no_drift", "dag_id": "mmguard_drift_monitor",
         "conf": conf(reference_manifest=manifests["reference"],
                      current_manifest=manifests["similar"])},
        {"name": "drift", "dag_id": "mmguard_drift_monitor",
         "conf": conf(reference_manifest=manifests["reference"],
                      current_manifest=manifests["shifted"])},
        {"name": "dvc_default", "dag_id": "mmguard_drift_monitor", "conf": conf()},
        # register/promote need a trained model and a registry: tests/pipeline covers them; here
        # dag.test() marks them successful so the run reaches its last task.
        {"name": "retrain", "dag_id": "mmguard_retrain",
         "conf": {"project_dir": str(retrain_root), "source": "synthetic"},
         "mark_success": "register|promote"},
    ]
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(driver), str(REPO / "dags"), json.dumps(runs)],
                          env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    result["runs"] = {run["name"]: run for run in result["runs"]}
    result.update(drift_root=drift_root, retrain_root=retrain_root, log=proc.stdout + proc.stderr)
    return result


def test_dag_files_import_without_errors(airflow_result):
    assert airflow_result["import_errors"] == {}
    assert set(airflow_result["dags"]) == {"mmguard_retrain", "mmguard_drift_monitor"}


def test_retrain_runs_weekly_in_strict_series(airflow_result):
    dag = airflow_result["dags"]["mmguard_retrain"]
    assert (dag["schedule"], dag["catchup"], dag["max_active_runs"]) == ("@weekly", False, 1)
    assert dag["params"] == ["project_dir", "source"]
    # A straight line: no two tasks (and so no two dvc processes) can run at once.
    assert dag["downstream"] == {"fetch": ["track_data"], "track_data": ["reproduce"],
                                 "reproduce": ["register"], "register": ["promote"],
                                 "promote": ["push"], "push": []}


def test_drift_monitor_branches_on_the_summary(airflow_result):
    dag = airflow_result["dags"]["mmguard_drift_monitor"]
    assert (dag["schedule"], dag["catchup"]) == ("@daily", False)
    assert dag["downstream"] == {"measure_drift": ["alert_drift", "check_drift"],
                                 "check_drift": ["alert_drift", "no_drift"],
                                 "alert_drift": [], "no_drift": []}


def test_drift_monitor_run_without_drift_succeeds(airflow_result):
    run = airflow_result["runs"]["no_drift"]
    assert run["state"] == "success", airflow_result["log"][-3000:]
    assert run["tasks"] == {"measure_drift": "success", "check_drift": "success",
                            "no_drift": "success", "alert_drift": "skipped"}
    written = list((airflow_result["drift_root"] / "artifacts/monitoring/drift").glob("*/drift.json"))
    assert len(written) == 2  # one per explicit-manifest run


def test_drift_monitor_run_with_drift_fails(airflow_result):
    run = airflow_result["runs"]["drift"]
    assert run["state"] == "failed"
    assert run["tasks"] == {"measure_drift": "success", "check_drift": "success",
                            "alert_drift": "failed", "no_drift": "skipped"}
    assert "dataset drift: 22% of columns drifted (brightness, text_length)" in airflow_result["log"]


def test_drift_monitor_default_runs_the_dvc_stage(airflow_result):
    run = airflow_result["runs"]["dvc_default"]
    assert run["state"] == "success", airflow_result["log"][-3000:]
    assert run["tasks"]["no_drift"] == "success"
    root = airflow_result["drift_root"]
    summary = json.loads((root / "artifacts/drift/drift.json").read_text())
    assert summary["n_reference"] == 45 and summary["n_current"] == 45
    assert (root / "dvc.lock").exists()  # DVC, not a bare call, produced it


def test_retrain_run_fetches_tracks_and_reproduces(airflow_result):
    run = airflow_result["runs"]["retrain"]
    assert run["state"] == "success", airflow_result["log"][-3000:]
    assert run["tasks"] == dict.fromkeys(
        ["fetch", "track_data", "reproduce", "register", "promote", "push"], "success")
    root = airflow_result["retrain_root"]
    assert (root / "data.dvc").exists()
    assert any((root / "data/synthetic").rglob("*.jsonl"))
    stats = json.loads((root / "artifacts/ingest/stats.json").read_text())
    assert stats["rows_in"] > 0
    assert "no default DVC remote: nothing to push" in airflow_result["log"]
