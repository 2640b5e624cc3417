"""`mmguard stack up | down | status`: the whole topology on one machine, no containers.

Order matters on the way up (Postgres → S3 → MLflow → Airflow's schema → Airflow's processes)
and is reversed on the way down. `up` starts only what is not already running and `down` stops
only what `up` recorded in its pid files; every service's data stays under `.stack/`.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import load_params
from pipeline.stack import objectstore, postgres, processes, services
from pipeline.stack.processes import StackError
from pipeline.stack.state import DVC_BUCKET, StackState

DVC_REMOTE = "stack"
STARTUP_TIMEOUT_S = 600  # a loaded 2-core machine needs minutes for the first MLflow/Airflow migrations


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    pid: int | None
    healthy: bool


def _running(state: StackState, name: str) -> bool:
    return processes.running_pid(state.pid_file(name)) is not None


def service_names() -> list[str]:
    return [postgres.SERVICE, objectstore.SERVICE, "mlflow", *services.AIRFLOW_PROCESSES]


def _start_process(state: StackState, name: str, command: list[str], env: dict[str, str],
                   healthy, what: str) -> None:
    processes.start(command, env, state.pid_file(name), state.log_file(name), state.project)
    _wait_healthy(state, name, healthy, what)


def _wait_healthy(state: StackState, name: str, healthy, what: str) -> None:
    log = state.log_file(name)

    def ready() -> bool:
        if not _running(state, name):
            raise StackError(f"{what} exited during start-up; see {log}")
        return healthy()

    processes.wait_until(ready, what, STARTUP_TIMEOUT_S, log)


def _airflow_cli(state: StackState, env: dict[str, str], *args: str) -> None:
    log = state.log_file("airflow-setup")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        result = subprocess.run([str(services.BIN / "airflow"), *args], env=env,
                                cwd=state.project, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise StackError(f"airflow {' '.join(args[:2])} failed ({result.returncode}); see {log}")


def _set_up_airflow(state: StackState, env: dict[str, str]) -> None:
    """Schema up to date, and the pool the retrain DAG's GPU stages run in (a task in a missing
    pool is never queued)."""
    _airflow_cli(state, env, "db", "migrate")
    slots = load_params(state.project / "params.yaml").airflow.gpu_pool_slots
    _airflow_cli(state, env, "pools", "set", "gpu", str(slots),
                 "GPU stages of mmguard_retrain (params airflow.gpu_pool_slots)")


def connect_dvc(state: StackState, project: Path) -> None:
    """Point `project`'s DVC default remote at the stack's S3 bucket. It goes to
    .dvc/config.local (git-ignored), so the committed config stays local-first."""
    creds = state.credentials()
    dvc = str(services.BIN / "dvc")
    env = services._base_env(state)
    # "--" ends the options: a generated key may start with "-".
    modify = ["remote", "modify", "--local", "--", DVC_REMOTE]
    for args in (["remote", "add", "--local", "--force", "--default", DVC_REMOTE,
                  f"s3://{DVC_BUCKET}"],
                 [*modify, "endpointurl", objectstore.endpoint(state)],
                 [*modify, "region", objectstore.REGION],
                 [*modify, "access_key_id", creds["s3_access_key"]],
                 [*modify, "secret_access_key", creds["s3_secret_key"]]):
        result = subprocess.run([dvc, *args], cwd=project, env=env, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise StackError(f"dvc {' '.join(args[:3])} in {project} failed: "
                             f"{result.stderr.strip()}")


def up(state: StackState) -> dict[str, float]:
    """Start every service that is not running; seconds each one took to become healthy."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    state.ensure_private_root()
    state.credentials()
    if not any(_running(state, name) for name in service_names()):
        # A port kept from an earlier start that someone else holds now gets a new number.
        state.claim_ports(set(state.ports()))

    def timed(name: str, action) -> None:
        if _running(state, name):
            return
        begin = time.monotonic()
        action()
        timings[name] = round(time.monotonic() - begin, 1)

    timed(postgres.SERVICE, lambda: postgres.start(state))
    timed(objectstore.SERVICE, lambda: objectstore.start(state, services._base_env(state)))
    timed("mlflow", lambda: _start_process(
        state, "mlflow", services.mlflow_command(state), services.mlflow_env(state),
        lambda: services.mlflow_healthy(state), "the MLflow server"))
    airflow_env = services.airflow_env(state)
    if not all(_running(state, name) for name in services.AIRFLOW_PROCESSES):
        begin = time.monotonic()
        _set_up_airflow(state, airflow_env)
        timings["airflow-setup"] = round(time.monotonic() - begin, 1)
    api, *others = services.AIRFLOW_PROCESSES
    timed(api, lambda: _start_process(state, api, services.airflow_command(api), airflow_env,
                                      lambda: services.airflow_component_healthy(state, api),
                                      api))
    # The other three only need the database and the api-server: start them together and wait
    # once, as their heartbeats show up in the api-server's health answer.
    begin = time.monotonic()
    pending = [name for name in others if not _running(state, name)]
    for name in pending:
        processes.start(services.airflow_command(name), airflow_env, state.pid_file(name),
                        state.log_file(name), state.project)
    for name in pending:
        _wait_healthy(state, name, lambda name=name: services.airflow_component_healthy(
            state, name), name)
        timings[name] = round(time.monotonic() - begin, 1)
    if (state.project / ".dvc").is_dir():
        connect_dvc(state, state.project)
    timings["total"] = round(time.monotonic() - started, 1)
    return timings


def down(state: StackState) -> list[str]:
    """Stop, in reverse start order, what `up` started; the names of what was stopped."""
    stopped = []
    for name in reversed(service_names()):
        was_running = (postgres.stop(state) if name == postgres.SERVICE
                       else processes.stop(state.pid_file(name)))
        if was_running:
            stopped.append(name)
    return stopped


def stop_service(state: StackState, name: str) -> bool:
    """Stop one service (e.g. the MLflow server, to see how clients fail)."""
    if name not in service_names():
        raise StackError(f"unknown service {name!r}; one of {', '.join(service_names())}")
    return postgres.stop(state) if name == postgres.SERVICE else processes.stop(
        state.pid_file(name))


def status(state: StackState) -> list[ServiceStatus]:
    if not state.ports_file.exists():
        return [ServiceStatus(name, "-", None, False) for name in service_names()]
    ports = state.ports()
    urls = {
        postgres.SERVICE: f"postgresql://127.0.0.1:{ports['postgres']}",
        objectstore.SERVICE: objectstore.endpoint(state),
        "mlflow": services.mlflow_url(state),
    }
    checks = {
        postgres.SERVICE: lambda: postgres.healthy(state),
        objectstore.SERVICE: lambda: objectstore.healthy(state),
        "mlflow": lambda: services.mlflow_healthy(state),
    }
    rows = []
    for name in service_names():
        pid = processes.running_pid(state.pid_file(name))
        if name in services.AIRFLOW_PROCESSES:
            url = services.airflow_url(state) if name == "airflow-api-server" else "-"
            healthy = pid is not None and services.airflow_component_healthy(state, name)
        else:
            url = urls[name]
            healthy = pid is not None and checks[name]()
        rows.append(ServiceStatus(name, url, pid, healthy))
    return rows
