"""Airflow's overhead on the main job (make bench, or alone:
`.venv/bin/python -m pytest tests/bench/test_bench_orchestration.py -s -p no:cacheprovider`).

Two fresh copies of the project with the committed params.yaml, cold (no data, no DVC cache, no
metadata DB), one after the other in this one run:
- through Airflow: `mmguard run` (Airflow set-up + `dag.test()` of the retrain DAG, one task per
  DVC stage, register, gate, promote);
- plain: the same work without Airflow: `mmguard fetch`, `dvc add data`, `dvc repro`,
  `mmguard register`, `mmguard promote`.
Prints both wall times, their ratio and the per-task durations of the Airflow run.
"""
import re
import time

from tests.project import make_project, run

PLAIN = [["mmguard", "fetch", "--source", "synthetic"], ["dvc", "add", "data"],
         ["dvc", "repro"], ["mmguard", "register"], ["mmguard", "promote"]]


def _timed(commands, root) -> tuple[float, str]:
    start = time.perf_counter()
    output = "".join(run(command, root).stdout for command in commands)
    return time.perf_counter() - start, output


def test_airflow_run_against_plain_dvc_repro(tmp_path):
    airflow_s, report = _timed([["mmguard", "run"]], make_project(tmp_path / "airflow"))
    plain_s, _ = _timed(PLAIN, make_project(tmp_path / "plain"))
    table = report[report.index("mmguard_retrain: "):report.index("Airflow UI")]
    print(f"\n[bench] cold make run through Airflow: {airflow_s:.1f} s")
    print(f"[bench] cold plain fetch + dvc add + dvc repro + register + promote: {plain_s:.1f} s")
    print(f"[bench] Airflow / plain: {airflow_s / plain_s:.2f}x "
          f"(+{airflow_s - plain_s:.1f} s)")
    print("[bench] per task of the Airflow run:\n" + table)
    assert "mmguard_retrain: success" in report
    assert re.search(r"^\s+train\s+success\s+\d", table, flags=re.M)
