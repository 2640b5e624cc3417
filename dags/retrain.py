"""mmguard_retrain: fetch → track → one task per DVC stage → register → gate → promote | keep.

The stage tasks and their edges are dvc.yaml's stage graph, read when the DAG is parsed
(pipeline/orchestration/dvc_graph.py): adding a stage to dvc.yaml adds a task. Each runs only its
own stage (`mmguard stage NAME`: `dvc repro --single-item NAME`, with pull/push around it when a
DVC remote is configured, unless every task shares one workspace as in `mmguard run`), with its
own retries and timeout from params.yaml's `airflow` section.
GPU stages run in pool `gpu` and on queue `gpu`.

The gate is a branch: a challenger it refuses ends the run green on `keep_champion`, the champion
unchanged and the reasons in the log and in the version's tags. Push and summary run either way.
Scheduled weekly, and whenever the drift monitor reports a drifted incoming batch.
"""
from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

from _common import (DEFAULT_ARGS, DRIFT_DETECTED, DVC, PARAMS, PROJECT_DIR, START_DATE,
                     project_command, project_env)
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from pipeline.orchestration import dvc_graph
from pipeline.orchestration.stage_runner import ONE_WORKSPACE
from pipeline.sources import SOURCE_NAMES

GATE_DECISION = "artifacts/gate/decision.json"
RECORD = "none_failed_min_one_success"  # recording steps run after promote OR keep_champion

STAGES = dvc_graph.read_stages(PROJECT_DIR)
UPSTREAM = dvc_graph.upstream(STAGES)
unknown = sorted(set(PARAMS.airflow.stages) - set(STAGES))
if unknown:
    raise ValueError(f"params.yaml airflow.stages names stages not in dvc.yaml: {unknown}")


def with_remote(command: str, otherwise: str) -> str:
    return (f'if dvc remote default >/dev/null 2>&1; then {command}; '
            f'else echo "{otherwise}"; fi')


def unless_one_workspace(command: str, otherwise: str) -> str:
    return (f'if [ "${{{ONE_WORKSPACE}:-}}" = 1 ]; then echo "{otherwise}"; '
            f'else {command}; fi')


@task.branch(task_id="gate")
def gate() -> str:
    """`mmguard gate` decides and tags the challenger; the branch follows its decision."""
    done = subprocess.run(["mmguard", "gate", "--out", GATE_DECISION], cwd=PROJECT_DIR,
                          env={**os.environ, **project_env()}, capture_output=True, text=True)
    print(done.stdout + done.stderr)  # into the task log, whatever the worker does with fd 1
    done.check_returncode()
    decision = json.loads((PROJECT_DIR / GATE_DECISION).read_text())
    print(f"gate decision for {decision['name']} v{decision['challenger']} "
          f"(champion seen: {decision['champion_seen']}): {decision['decision']}")
    for reason in decision["reasons"]:
        print(f"  - {reason}")
    return "promote" if decision["decision"] == "promote" else "keep_champion"


@task(task_id="keep_champion")
def keep_champion() -> None:
    decision = json.loads((PROJECT_DIR / GATE_DECISION).read_text())
    print(f"champion unchanged ({decision['champion_seen']}); challenger v"
          f"{decision['challenger']} refused: " + "; ".join(decision["reasons"]))


@task(task_id="summary", trigger_rule=RECORD)
def summary() -> None:
    from pipeline import workflow
    from pipeline.paths import Paths

    print(workflow.summary(Paths(PROJECT_DIR)))
    decision = PROJECT_DIR / GATE_DECISION
    if decision.exists():
        print("gate: " + json.dumps(json.loads(decision.read_text())))


with DAG(
    dag_id="mmguard_retrain",
    description="Fetch data, run the DVC stages one task each, register and gate the model",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@weekly", timezone="UTC"),
                                 assets=DRIFT_DETECTED),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # one workspace: a second run would race the first on data/ and DVC
    default_args=DEFAULT_ARGS,
    params={
        # Items limited to known source names keep the templated command safe.
        "source": Param([], type="array", items={"type": "string", "enum": list(SOURCE_NAMES)},
                        description="Sources fetch lands and ingest reads (empty: params.yaml's "
                                    "ingest.sources); batches in data/incoming/ always join"),
    },
    tags=["mmguard", "training"],
) as dag:
    fetch = project_command("fetch", "mmguard land $SOURCES",
                            env={"SOURCES": "{{ params.source | join(' ') }}"}, retries=2)
    # With a DVC remote the data goes there at once: a stage task on another machine pulls it
    # (in a run whose tasks share one workspace, the push task sends it with the rest).
    track_data = project_command("track_data", f"{DVC} add data\n" + unless_one_workspace(
        with_remote(f"{DVC} push data.dvc", "no default DVC remote: data stays in this workspace"),
        "one workspace: data goes to the DVC remote in the push task"))
    fetch >> track_data

    stage_tasks = {}
    for name in STAGES:
        retries, timeout_min = PARAMS.airflow.for_stage(name)
        gpu = {"pool": "gpu", "queue": "gpu"} if name in PARAMS.airflow.gpu_stages else {}
        stage_tasks[name] = project_command(
            name, f"mmguard stage {name}", retries=retries,
            execution_timeout=timedelta(minutes=timeout_min), **gpu)
    for name, parents in UPSTREAM.items():
        for parent in parents or []:
            stage_tasks[parent] >> stage_tasks[name]
        if not parents:
            track_data >> stage_tasks[name]

    register = project_command("register", "mmguard register")
    leaves = [stage_tasks[n] for n in STAGES if not any(n in p for p in UPSTREAM.values())]
    leaves >> register
    decide = gate()
    register >> decide
    # Promotion applies the gate's decision only if @champion has not moved since (compare and
    # set); the new champion's training data becomes the drift monitor's reference.
    promote = project_command(
        "promote", f"mmguard promote --decision {GATE_DECISION}\nmmguard monitor reference")
    decide >> [promote, keep_champion()]
    # With a DVC remote configured (S3/MinIO in docker/compose.yaml) the data and every stage's
    # outputs are pushed so another machine can `mmguard checkout --version N` this exact run.
    push = project_command(
        "push", with_remote(f"{DVC} push", "no default DVC remote: nothing to push"),
        trigger_rule=RECORD)
    [promote, dag.get_task("keep_champion")] >> push >> summary()
