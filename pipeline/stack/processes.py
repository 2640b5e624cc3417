"""Start, find and stop the stack's long-running processes.

Each one runs in its own session (process group), so stopping it also stops the children it
spawned (Airflow's task supervisors, uvicorn workers). Its pid file records the pid and the
process's start time: `down` signals only a process whose pid *and* start time still match, so a
pid the kernel reused for someone else's process is never touched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

STOP_GRACE_S = 20.0


def _matches(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


def running_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` when that very process is still alive."""
    if not pid_file.exists():
        return None
    record = json.loads(pid_file.read_text())
    if _matches(record["pid"], record["started"]):
        try:
            if psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE:
                return record["pid"]
        except psutil.Error:
            pass
    return None


def start(command: list[str], env: dict[str, str], pid_file: Path, log_file: Path,
          cwd: Path) -> int:
    # Logs may quote connection settings: only the owner reads them.
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(command)}\n"
                  .encode())
        log.flush()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    started = psutil.Process(process.pid).create_time()
    pid_file.write_text(json.dumps({"pid": process.pid, "started": started,
                                    "command": command}) + "\n")
    return process.pid


def stop(pid_file: Path) -> bool:
    """SIGTERM the recorded process group, SIGKILL what is left after a grace period. True when
    something was stopped."""
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    group = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(_alive(p) for p in group):
        time.sleep(0.2)
    for leftover in (p for p in group if _alive(p)):
        try:
            os.kill(leftover, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_until(check, what: str, timeout_s: float, log_file: Path | None = None) -> None:
    """Poll `check()` until it is true; on timeout name what did not come up and where its log
    is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    where = f"; see {log_file}" if log_file else ""
    raise StackError(f"{what} did not become healthy within {timeout_s:.0f}s{where}")


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says which service and why."""
