"""mmguard_retrain: the weekly retraining run, fetch → track → reproduce → register → promote.

Every DVC command runs in series in one project workspace (see _common.DVC). `mmguard promote`
moves the `champion` alias only when the gate passes; registering a challenger that then fails
the gate is a normal outcome, reported in the promote task's log.
"""
from __future__ import annotations

from _common import DEFAULT_ARGS, DVC, START_DATE, project_command, project_dir_param
from airflow.sdk import DAG, Param, chain

SOURCES = ["synthetic", "hateful_memes", "mmhs150k", "fakeddit", "coco"]

with DAG(
    dag_id="mmguard_retrain",
    description="Fetch new data, reproduce the DVC pipeline, register and gate the model",
    schedule="@weekly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # one workspace: a second run would race the first on data/ and DVC
    default_args=DEFAULT_ARGS,
    params={
        # An enum keeps the templated command safe: only these words reach the shell.
        "source": Param("synthetic", enum=SOURCES, description="Source `mmguard fetch` lands"),
        "project_dir": project_dir_param(),
    },
    tags=["mmguard", "training"],
) as dag:
    fetch = project_command("fetch", "mmguard fetch --source {{ params.source }}", retries=2)
    track_data = project_command("track_data", f"{DVC} add data")
    reproduce = project_command("reproduce", f"{DVC} repro")
    register = project_command("register", "mmguard register")
    promote = project_command("promote", "mmguard promote")
    # With a DVC remote configured (S3/MinIO in docker/compose.yaml) the data and every stage's
    # outputs are pushed so other machines can `dvc pull` this exact run.
    push = project_command(
        "push",
        f'if dvc remote default >/dev/null 2>&1; then {DVC} push; '
        'else echo "no default DVC remote: nothing to push"; fi')

    chain(fetch, track_data, reproduce, register, promote, push)
