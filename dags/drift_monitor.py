"""mmguard_drift_monitor: the daily drift check, failing the run when the data drifted.

By default it runs the DVC `drift` stage (reference and current splits from params.yaml). Given
`current_manifest` (and optionally `reference_manifest`), it compares those two manifests instead
and writes under artifacts/monitoring/drift/<timestamp>/, outside the DVC-tracked outputs.
"""
from __future__ import annotations

import json
from pathlib import Path

from _common import DEFAULT_ARGS, DVC, START_DATE, project_command, project_dir_param
from airflow.sdk import DAG, Param, chain, task
from airflow.providers.standard.operators.empty import EmptyOperator

# Paths arrive through the environment, never pasted into the script, so no value a user types
# into the trigger form is ever parsed by the shell.
MEASURE = f"""
if [ -n "$CURRENT_MANIFEST" ] || [ -n "$REFERENCE_MANIFEST" ]; then
  out="artifacts/monitoring/drift/$(date -u +%Y%m%dT%H%M%SZ)"
  python -m pipeline.stages.drift --out "$out" \\
    ${{CURRENT_MANIFEST:+--current "$CURRENT_MANIFEST"}} \\
    ${{REFERENCE_MANIFEST:+--reference "$REFERENCE_MANIFEST"}} >&2
else
  out="artifacts/drift"
  {DVC} repro drift >&2
fi
# The last line is the task's XCom: where the summary landed.
echo "$out/drift.json"
"""


@task.branch(task_id="check_drift")
def check_drift(summary_path: str, params: dict | None = None) -> str:
    summary = json.loads((Path(params["project_dir"]) / summary_path).read_text())
    print(f"drift summary {summary_path}: {json.dumps(summary)}")
    return "alert_drift" if summary["dataset_drift"] else "no_drift"


@task(task_id="alert_drift")
def alert_drift(summary_path: str, params: dict | None = None) -> None:
    # Failing the run is the alert: it shows red in the UI and fires failure callbacks.
    from airflow.sdk.exceptions import AirflowFailException

    summary = json.loads((Path(params["project_dir"]) / summary_path).read_text())
    message = (f"dataset drift: {summary['drift_share']:.0%} of columns drifted "
               f"({', '.join(summary['drifted_columns'])}); "
               f"{summary['n_reference']} reference vs {summary['n_current']} current items")
    if params["fail_on_drift"]:
        raise AirflowFailException(message)
    print(f"WARNING {message}")


with DAG(
    dag_id="mmguard_drift_monitor",
    description="Compare current data against the reference with Evidently; alert on drift",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "project_dir": project_dir_param(),
        "reference_manifest": Param("", type="string",
                                    description="Manifest to compare against (blank: the "
                                                "reference split of the clean manifest)"),
        "current_manifest": Param("", type="string",
                                  description="Manifest of the new data (blank: run the DVC "
                                              "drift stage on the configured splits)"),
        "fail_on_drift": Param(True, type="boolean",
                               description="Fail the run when dataset drift is detected"),
    },
    tags=["mmguard", "monitoring"],
) as dag:
    measure = project_command(
        "measure_drift", MEASURE,
        env={"CURRENT_MANIFEST": "{{ params.current_manifest }}",
             "REFERENCE_MANIFEST": "{{ params.reference_manifest }}"})
    branch = check_drift(measure.output)
    chain(branch, [alert_drift(measure.output), EmptyOperator(task_id="no_drift")])
