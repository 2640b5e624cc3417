"""Child process of `mmguard run`: the project's Airflow set-up (metadata DB migrated, `gpu` pool
with `airflow.gpu_pool_slots` slots, both idempotent), then the DAG folder parsed as the DAG
processor does, `dag.test()` of one DAG, and `RESULT {json}` with each task's state and duration.
Airflow's configuration comes from the environment local_airflow.airflow_env() sets."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def set_up() -> None:
    """What a deployment does once with `airflow db migrate` and `airflow pools set gpu N ...`."""
    from airflow.models.pool import Pool
    from airflow.utils import db

    from pipeline.params import load_params

    db.upgradedb()
    slots = load_params(Path(os.environ["MMGUARD_PROJECT_DIR"]) / "params.yaml").airflow
    Pool.create_or_update_pool("gpu", slots.gpu_pool_slots, "GPU stages of mmguard_retrain "
                               "(params airflow.gpu_pool_slots)", include_deferred=False)


def main(dag_id: str, conf: dict) -> dict:
    from airflow.dag_processing.dagbag import BundleDagBag

    set_up()
    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {json.dumps(bag.import_errors, indent=2)}")
    dagrun = bag.get_dag(dag_id).test(run_conf=conf)
    tasks = sorted(dagrun.get_task_instances(), key=lambda ti: (ti.start_date is None,
                                                                ti.start_date or 0))
    return {"dag_id": dag_id, "state": str(dagrun.state), "tasks": [
        {"task_id": ti.task_id, "state": str(ti.state), "try_number": ti.try_number,
         "duration": ti.duration} for ti in tasks]}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
