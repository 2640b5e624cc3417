"""Run Airflow code in a child process: Airflow reads its configuration when first imported, so
every test that touches Airflow gets its own AIRFLOW_HOME (and SQLite DB) under tmp_path and this
test process never imports airflow. A child prints one `RESULT {json}` line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.orchestration.local_airflow import airflow_env

REPO = Path(__file__).resolve().parents[2]

# Parse a dags folder the way the DAG processor does and describe every DAG.
DESCRIBE = '''
import json, os
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag

folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
result = {"import_errors": {Path(k).name: v for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    timetable = dag.timetable
    result["dags"][dag_id] = {
        "schedule": type(timetable).__name__,
        "assets": sorted(a.name for a in getattr(timetable.asset_condition, "objects",
                                                 [timetable.asset_condition])
                       if a is not None),  # a plain time schedule has no asset condition
        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "params": {k: dag.params[k] for k in dag.params.keys()},
        "tasks": {t.task_id: {
            "downstream": sorted(t.downstream_task_ids), "pool": t.pool, "queue": t.queue,
            "retries": t.retries,
            "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
            "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
            "outlets": sorted(getattr(o, "name", str(o)) for o in t.outlets),
            "alerts": [type(c).__name__ for c in (t.on_failure_callback or [])],
        } for t in dag.tasks}}
print("RESULT " + json.dumps(result, default=str))
'''


def child_env(project: Path, home: Path, dags: Path = REPO / "dags") -> dict[str, str]:
    env = airflow_env(project)
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    return env


def migrate(home: Path) -> Path:
    """A migrated metadata DB (`airflow db migrate`); tests copy it instead of migrating again."""
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                   env=child_env(REPO, home), check=True, capture_output=True, timeout=600)
    return home / "airflow.db"


def run_child(code: str, project: Path, home: Path, *args: str, timeout: int = 600,
              dags: Path = REPO / "dags", db: Path | None = None,
              extra_env: dict[str, str] | None = None) -> dict:
    """Run `code` with Airflow configured for `project`; `db`: a migrated DB to start from."""
    env = {**child_env(project, home, dags), **(extra_env or {})}
    home.mkdir(parents=True, exist_ok=True)
    if db is not None:
        shutil.copy2(db, home / "airflow.db")
    script = home / "child.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script), *args], env=env, cwd=project,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    result["log"] = proc.stdout + proc.stderr
    return result
