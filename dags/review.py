"""mmguard_review: the human review loop. Daily (or triggered): build the review queue from
the last day of captured traffic, and import every Label Studio export waiting in
data/review/returned/ as an incoming batch (each export moves to data/review/done/ once
imported, so it is never imported twice). The import task's outlet is the incoming-batch Asset,
so the drift monitor (and through it the retrain) picks the labelled batch up. With no export
waiting the import is skipped and no Asset event is emitted.
"""
from __future__ import annotations

from _common import DEFAULT_ARGS, INCOMING_BATCH, PROJECT_DIR, START_DATE, project_command
from airflow.sdk import DAG, CronTriggerTimetable, chain, task


@task.short_circuit(task_id="exports_waiting")
def exports_waiting() -> bool:
    waiting = sorted((PROJECT_DIR / "data" / "review" / "returned").glob("*.json"))
    print(f"exports waiting in data/review/returned/: {[p.name for p in waiting]}")
    return bool(waiting)


with DAG(
    dag_id="mmguard_review",
    description="Queue captured traffic for human review; import returned labels as an "
                "incoming batch",
    schedule=CronTriggerTimetable("@daily", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["mmguard", "review"],
) as dag:
    queue = project_command("build_queue", "mmguard review queue --since 24h")
    imported = project_command("import_returned", "mmguard review import",
                               outlets=[INCOMING_BATCH])
    # Independent: labels that came back are imported even on a day the queue cannot be built.
    chain(exports_waiting(), imported)
