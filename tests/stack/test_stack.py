"""With the stack up (Postgres, S3, MLflow server, Airflow's own processes): the retrain DAG
triggered through Airflow's REST API, run by the real scheduler and LocalExecutor, against the
MLflow server's registry and the S3 DVC remote. The tests run in file order and share one stack.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests
import yaml

from pipeline.stack import objectstore, services
from pipeline.stack.state import DVC_BUCKET, MONITORING_BUCKET
from tests.project import BIN, project_env
from tests.stack.harness import commit_all, mmguard

DAG = "mmguard_retrain"
MODEL = "mmguard-hateful_memes"
RUN_TIMEOUT_S = 1800  # a loaded 2-core machine took over 15 min for the first run
pytestmark = pytest.mark.stack
TIMINGS: dict[str, float] = {}


def _versions(client) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))


def _champion(client) -> str | None:
    try:
        return client.get_model_version_by_alias(MODEL, "champion").version
    except Exception:  # noqa: BLE001 - no such alias yet
        return None


def _run_count(client) -> int:
    """Runs in every experiment (the first training run creates its experiment)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids)) if ids else 0


def _run(airflow, conf: dict | None = None) -> tuple[str, str]:
    run_id = airflow.trigger(DAG, conf)
    return run_id, airflow.wait(DAG, run_id, RUN_TIMEOUT_S)


def test_status_reports_every_service_healthy(stack):
    result = mmguard("stack", "status", "--root", str(stack.project), cwd=stack.project)
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and all(" healthy " in line for line in lines), result.stdout
    for line in lines:
        url = line.split()[-1]
        assert url == "-" or "127.0.0.1:" in url, line
    assert oct(stack.credentials_file.stat().st_mode & 0o777) == "0o600"


def test_mlflow_refuses_unauthenticated_requests(stack):
    url = services.mlflow_url(stack)
    search = f"{url}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=("admin", "wrong"), timeout=30).status_code == 401
    alias = {"name": MODEL, "alias": "champion", "version": "1"}
    assert requests.post(f"{url}/api/2.0/mlflow/registered-models/alias", json=alias,
                         timeout=30).status_code == 401
    creds = stack.credentials()
    assert requests.get(search, auth=("admin", creds["mlflow_admin_password"]),
                        timeout=60).status_code == 200


def test_retrain_dag_through_the_rest_api(stack, airflow, client):
    airflow.wait_for_dag(DAG)
    airflow.unpause(DAG)
    run_id, state = _run(airflow)
    tasks = airflow.task_states(DAG, run_id)
    assert state == "success", tasks
    assert tasks["promote"] == "success", tasks  # the first model has no champion to beat
    TIMINGS["first run through the scheduler (start to end)"] = next(
        r["duration"] for r in airflow.runs(DAG) if r["dag_run_id"] == run_id)
    # @champion in the server's registry, its weights in the S3 artifact store
    champion = _champion(client)
    assert champion is not None
    version = client.get_model_version(MODEL, champion)
    assert version.source.startswith(("models:/", "mlflow-artifacts:/")), version.source
    # every DVC output is in the S3 remote
    status = subprocess.run([str(BIN / "dvc"), "status", "-c", "--json"], cwd=stack.project,
                            env=project_env(), capture_output=True, text=True, check=True)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    # the drift report is there, and its bytes are in the bucket
    lock = yaml.safe_load((stack.project / "dvc.lock").read_text())
    report = next(out for out in lock["stages"]["drift"]["outs"]
                  if out["path"] == "artifacts/drift/report.html")
    key = f"files/md5/{report['md5'][:2]}/{report['md5'][2:]}"
    objectstore.client(stack).head_object(Bucket=DVC_BUCKET, Key=key)
    summary = json.loads((stack.project / "artifacts/drift/drift.json").read_text())
    assert {"drift_share", "dataset_drift", "drifted_columns"} <= set(summary)


def test_unchanged_data_registers_no_new_version(stack, airflow, client):
    before = _versions(client)
    champion = _champion(client)
    run_id, state = _run(airflow)
    assert state == "success", airflow.task_states(DAG, run_id)
    assert _versions(client) == before
    assert _champion(client) == champion


def test_served_traffic_is_captured_in_s3_and_judged_from_there(stack, client, tmp_path):
    """`mmguard predict` through the champion captures each row to the monitoring bucket, and
    `mmguard drift --since` (what the drift monitor runs) reads the traffic back from S3."""
    import pandas as pd

    env = {**services.client_env(stack), "MMGUARD_CAPTURE": "1"}  # the test session turns it off
    manifest = pd.read_parquet(stack.project / "artifacts/dedupe/manifest.parquet")
    rows = manifest[manifest["split"] == "test"].head(30)
    requests_file = tmp_path / "requests.jsonl"
    requests_file.write_text("".join(json.dumps({"id": r.id, "image": r.image_path,
                                                 "text": r.text}) + "\n"
                                     for r in rows.itertuples()))
    mmguard("predict", "--model", f"models:/{MODEL}@champion", "--input", str(requests_file),
            "--output", str(tmp_path / "scored.jsonl"), "--images-dir", str(stack.project),
            cwd=stack.project, env=env)
    listing = objectstore.client(stack).list_objects_v2(Bucket=MONITORING_BUCKET)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    # pyarrow also writes folder markers ("capture/", "capture/date=.../")
    assert [key for key in keys if key.endswith(".parquet")], keys

    out = tmp_path / "traffic-drift"
    mmguard("drift", "--since", "1h", "--out", str(out), cwd=stack.project, env=env)
    summary = json.loads((out / "drift.json").read_text())
    assert summary["n_current"] == len(rows), summary
    stats = json.loads((out / "stats.json").read_text())
    assert any(f"{MODEL} v{_champion(client)}" in note for note in stats["notes"]), stats


def test_mlflow_down_mid_run_fails_register_clearly_then_retry_succeeds(stack, airflow,
                                                                          client):
    # A new model: one more epoch retrains.
    params = yaml.safe_load((stack.project / "params.yaml").read_text())
    params["train"]["epochs"] += 1
    (stack.project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before, champion = _versions(client), _champion(client)

    # Every stage up to register talks to MLflow (train logs its run, evaluate its metrics, drift
    # loads @champion), so the server has to go down in the gap between them and register. A
    # closed default_pool holds register back once its upstream tasks are under way: the
    # scheduler checks pool slots only when it queues a task.
    upstream = airflow.upstream(DAG, "register")
    assert upstream, "register has no upstream tasks"
    started = {"queued", "running", "success"}
    slots = airflow.pool_slots("default_pool")
    run_id = airflow.trigger(DAG)
    try:
        _wait_tasks(airflow, run_id, lambda s: all(s.get(t) in started for t in upstream),
                    "register's upstream tasks never started")
        airflow.set_pool_slots("default_pool", 0)
        _wait_tasks(airflow, run_id, lambda s: all(s.get(t) == "success" for t in upstream),
                    "register's upstream tasks never finished")
        assert airflow.task_states(DAG, run_id)["register"] in (None, "scheduled"), \
            airflow.task_states(DAG, run_id)
        mmguard("stack", "stop", "mlflow", "--root", str(stack.project), cwd=stack.project)
    finally:
        airflow.set_pool_slots("default_pool", slots)
    try:
        assert airflow.wait(DAG, run_id, RUN_TIMEOUT_S) == "failed"
        tasks = airflow.task_states(DAG, run_id)
        assert tasks["register"] == "failed", tasks
        log = airflow.task_log(DAG, run_id, "register", 1)
        assert "MLflow tracking server" in log and "unreachable" in log, log[-3000:]
    finally:  # the later tests need the server back, whatever happened here
        mmguard("stack", "up", "--root", str(stack.project), cwd=stack.project)
    assert _versions(client) == before and _champion(client) == champion
    airflow.clear_failed(DAG, run_id)
    assert airflow.wait(DAG, run_id, RUN_TIMEOUT_S) == "success", \
        airflow.task_states(DAG, run_id)
    assert len(_versions(client)) == len(before) + 1


def _wait_tasks(airflow, run_id: str, done, what: str) -> None:
    """Poll the run's task states until `done(states)`; a failed run fails at once."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not done(states := airflow.task_states(DAG, run_id)):
        assert airflow.run_state(DAG, run_id) != "failed", states
        assert time.monotonic() < deadline, f"{what}: {states}"
        time.sleep(1)


def test_two_clones_share_only_the_remote_and_the_tracking_server(stack, tmp_path, client):
    """A runs ingest..shard, B trains from what A pushed, A evaluates what B pushed. Code and
    the small DVC metafiles (data.dvc, dvc.lock) travel by git, as between real workers; every
    data byte goes through the S3 remote."""
    env = services.client_env(stack)
    clones = {}
    for name in ("a", "b"):
        clone = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(stack.project), str(clone)], check=True)
        mmguard("stack", "connect", str(clone), "--root", str(stack.project), cwd=clone)
        clones[name] = clone
    a, b = clones["a"], clones["b"]
    # Fresh data only A has: its own synthetic seed.
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["synthetic"]["seed"] = params["synthetic"].get("seed", 0) + 7
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    mmguard("land", cwd=a, env=env)
    subprocess.run([str(BIN / "dvc"), "add", "data"], cwd=a, env=project_env(), check=True,
                   capture_output=True)
    subprocess.run([str(BIN / "dvc"), "push", "data.dvc"], cwd=a, env=project_env(),
                   check=True, capture_output=True)
    for stage in ("ingest", "dedupe", "validate", "shard"):
        mmguard("stage", stage, cwd=a, env=env)
    commit_all(a, "A: data and stages up to shard")

    subprocess.run(["git", "pull", "-q", "--no-rebase", str(a), "HEAD"], cwd=b, check=True,
                   capture_output=True)
    runs_before = _run_count(client)
    mmguard("stage", "train", cwd=b, env=env)
    assert not (b / "data").exists() and not (b / "artifacts/ingest").exists(), \
        "B pulled more than train needs"
    assert (b / "artifacts/model").is_dir()
    commit_all(b, "B: train")
    assert _run_count(client) == runs_before + 1

    subprocess.run(["git", "pull", "-q", "--no-rebase", str(b), "HEAD"], cwd=a, check=True,
                   capture_output=True)
    assert not (a / "artifacts/model").exists()
    mmguard("stage", "evaluate", cwd=a, env=env)
    metrics = json.loads((a / "artifacts/evaluate/metrics.json").read_text())
    assert metrics, "evaluate wrote no metrics"
    lock_a = yaml.safe_load((a / "dvc.lock").read_text())["stages"]
    lock_b = yaml.safe_load((b / "dvc.lock").read_text())["stages"]
    assert lock_a["train"] == lock_b["train"]  # A evaluated exactly the model B trained


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    for name, seconds in TIMINGS.items():
        print(f"\n{name}: {seconds:.1f}s")


def test_down_then_up_keeps_every_service_s_data(stack, client):
    versions, champion = _versions(client), _champion(client)
    s3 = objectstore.client(stack)
    objects = s3.list_objects_v2(Bucket=DVC_BUCKET)["KeyCount"]
    pids = {row.name: row.pid for row in _status(stack)}
    stopped = mmguard("stack", "down", "--root", str(stack.project), cwd=stack.project)
    assert "postgres" in stopped.stdout and "mlflow" in stopped.stdout
    assert all(row.pid is None for row in _status(stack))
    assert not any(_alive(pid) for pid in pids.values() if pid)

    mmguard("stack", "up", "--root", str(stack.project), cwd=stack.project)
    assert all(row.healthy for row in _status(stack))
    assert _versions(client) == versions and _champion(client) == champion
    assert objectstore.client(stack).list_objects_v2(Bucket=DVC_BUCKET)["KeyCount"] == objects


def _status(stack):
    from pipeline.stack import control

    return control.status(stack)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
