"""`mmguard run`: the retrain DAG once, end to end, through Airflow on this machine.

Airflow reads its configuration when first imported, so the run happens in a child process
(`pipeline.orchestration.dag_run`) whose environment points AIRFLOW_HOME at `airflow_home/` in the
project: the metadata DB is the SQLite file `airflow_home/airflow.db`, the DAGs are the project's
`dags/`. The child first does the project's Airflow set-up (dag_run.set_up): migrate the metadata
DB and create the `gpu` pool with `airflow.gpu_pool_slots` slots.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.orchestration.stage_runner import ONE_WORKSPACE, dvc_env

PACKAGE_DAGS = Path(__file__).resolve().parents[2] / "dags"
RETRAIN = "mmguard_retrain"


def dags_folder(root: Path) -> Path:
    """The project's own dags/, else the ones beside this package (a copy without dags/)."""
    return root / "dags" if (root / "dags").is_dir() else PACKAGE_DAGS


def airflow_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in dvc_env().items() if not k.startswith("AIRFLOW")}
    home = root / "airflow_home"
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder(root)),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MMGUARD_PROJECT_DIR": str(root),
        # dag.test() runs every task here, in this workspace: no per-stage pull and push
        # (pipeline/orchestration/stage_runner.py); the DAG's push task still pushes it all.
        ONE_WORKSPACE: "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def run_dag(root: Path, dag_id: str, conf: dict | None = None) -> dict:
    """One `dag.test()` run in a child process; its task logs stream to this console."""
    result = None
    with subprocess.Popen(
            [sys.executable, "-m", "pipeline.orchestration.dag_run", dag_id,
             json.dumps(conf or {})], env=airflow_env(root), cwd=root, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) as child:
        for line in child.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            else:
                print(line, end="", flush=True)
    if child.returncode != 0 or result is None:
        raise RuntimeError(f"dag.test of {dag_id} exited {child.returncode} without a result")
    return result


def report(result: dict, root: Path) -> str:
    lines = ["", f"{result['dag_id']}: {result['state']}", f"  {'task':<16}{'state':<17}seconds"]
    for ti in result["tasks"]:
        seconds = "" if ti["duration"] is None else f"{ti['duration']:.1f}"
        lines.append(f"  {ti['task_id']:<16}{ti['state']:<17}{seconds}")
    decision = root / "artifacts" / "gate" / "decision.json"
    if decision.exists():
        gate = json.loads(decision.read_text())
        lines.append(f"gate: {gate['decision']} {gate['name']} v{gate['challenger']} (champion "
                     f"seen: {gate['champion_seen']}): " + "; ".join(gate["reasons"]))
    home = root / "airflow_home"
    lines += [
        "",
        "Airflow UI on this run's metadata DB:",
        f"  AIRFLOW_HOME={home} AIRFLOW__CORE__DAGS_FOLDER={dags_folder(root)} "
        f"AIRFLOW__CORE__LOAD_EXAMPLES=False MMGUARD_PROJECT_DIR={root} "
        f"{Path(sys.executable).parent / 'airflow'} standalone",
        f"MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri "
        f"sqlite:///{root / 'mlflow.db'}",
        f"Data Docs: {root / 'artifacts/validate/data_docs/index.html'}",
        f"Drift report: {root / 'artifacts/drift/report.html'}",
    ]
    return "\n".join(lines)


def run_retrain(root: Path) -> int:
    root = root.resolve()
    (root / "airflow_home").mkdir(exist_ok=True)
    result = run_dag(root, RETRAIN)
    print(report(result, root), flush=True)
    return 0 if result["state"] == "success" else 1
