"""mmguard_drift_monitor: checks each new batch in data/incoming/ against the champion's training
reference and, on drift, schedules the retrain through the `mmguard_drift_detected` Asset.

Scheduled on the incoming-batch Asset or daily, whichever comes first. It runs no DVC stage: the
batch goes through the real ingest into a scratch folder and the drift stage's compare-two-
manifests mode (pipeline/orchestration/incoming.py). Each batch's report is recorded under
artifacts/monitoring/incoming/<batch>/drift/ and the batch is never checked twice. Without drift
the run records the reports and stops.
"""
from __future__ import annotations

import json

from _common import (DEFAULT_ARGS, DRIFT_DETECTED, INCOMING_BATCH, START_DATE,
                     project_command)
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain, task


@task.branch(task_id="check_drift")
def check_drift(result: str) -> str:
    checked = json.loads(result)
    print(f"checked batches: {json.dumps(checked['batches'])}")
    return "announce_drift" if checked["drifted"] else "no_drift"


@task(task_id="announce_drift", outlets=[DRIFT_DETECTED])
def announce_drift(result: str, outlet_events=None) -> None:
    """Succeeding emits the Asset event that schedules mmguard_retrain."""
    checked = json.loads(result)
    for name in checked["drifted"]:
        summary = checked["batches"][name]
        print(f"drift in batch {name}: {summary['drift_share']:.0%} of columns drifted "
              f"({', '.join(summary['drifted_columns'])}); retraining")
    outlet_events[DRIFT_DETECTED].extra = {"batches": checked["drifted"]}


with DAG(
    dag_id="mmguard_drift_monitor",
    description="Compare each new incoming batch with the champion's training data; on drift, "
                "schedule a retrain",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC"),
                                 assets=INCOMING_BATCH),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["mmguard", "monitoring"],
) as dag:
    # The command's last stdout line (one JSON object) is the task's XCom.
    measure = project_command("check_incoming", "mmguard monitor incoming")
    chain(check_drift(measure.output),
          [announce_drift(measure.output), EmptyOperator(task_id="no_drift")])
