"""One retrain run through the real scheduler of `mmguard stack up` against `dag.test()` on the
same tiny config, one after the other in this run (make bench, or alone:
`.venv/bin/python -m pytest tests/bench/test_bench_stack.py -s -p no:cacheprovider`; needs the
`stack` extra, `make stack-install`).

- scheduler: the stack up in a fresh copy, the DAG triggered through the REST API, run by the
  scheduler's LocalExecutor against Postgres, the MLflow server and the S3 remote;
- dag.test(): `mmguard run` in another fresh copy (SQLite metadata DB, local MLflow store, no
  remote), after the stack is down so it does not compete for the CPU.
"""
import time

from tests.project import run
from tests.stack.airflow_api import AirflowApi
from tests.stack.harness import copy_of_project, running_stack

DAG = "mmguard_retrain"


def test_scheduler_run_against_dag_test(tmp_path):
    with running_stack(tmp_path / "stack") as state:
        api = AirflowApi(state)
        api.wait_for_dag(DAG)
        api.unpause(DAG)
        begin = time.perf_counter()
        run_id = api.trigger(DAG)
        state_seen = api.wait(DAG, run_id, 1800)
        scheduler_s = time.perf_counter() - begin
        durations = api.task_durations(DAG, run_id)
    assert state_seen == "success", durations

    begin = time.perf_counter()
    report = run(["mmguard", "run"], copy_of_project(tmp_path / "dagtest")).stdout
    dag_test_s = time.perf_counter() - begin
    assert "mmguard_retrain: success" in report

    print(f"\n[bench] one retrain run, real scheduler (trigger to success): {scheduler_s:.1f} s")
    print(f"[bench] one retrain run, dag.test() via mmguard run (incl. set-up): {dag_test_s:.1f} s")
    print(f"[bench] scheduler / dag.test(): {scheduler_s / dag_test_s:.2f}x")
    print("[bench] per task through the scheduler (s): " +
          ", ".join(f"{task} {seconds:.1f}" for task, seconds in durations.items()))
