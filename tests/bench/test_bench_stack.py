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
    with running_stack() as state:
        api = AirflowApi(state)
        api.wait_for_dag(DAG)
        api.unpause(DAG)
        run_id = api.trigger(DAG)
        assert api.wait(DAG, run_id, 3600) == "success", api.task_states(DAG, run_id)
        scheduler_s = next(r["duration"] for r in api.runs(DAG) if r["dag_run_id"] == run_id)
        durations = api.task_durations(DAG, run_id)

    begin = time.perf_counter()
    report = run(["mmguard", "run"], copy_of_project(tmp_path / "dagtest")).stdout
    dag_test_s = time.perf_counter() - begin
    assert "mmguard_retrain: success" in report

    print(f"\n[bench] one cold retrain run, real scheduler (run start to end): {scheduler_s:.1f} s")
    print(f"[bench] one cold retrain run, dag.test() via mmguard run (incl. DB set-up): "
          f"{dag_test_s:.1f} s")
    print(f"[bench] scheduler / dag.test(): {scheduler_s / dag_test_s:.2f}x")
    print("[bench] per task through the scheduler (s): " +
          ", ".join(f"{task} {seconds:.1f}" for task, seconds in durations.items()))
