"""What the stack tier and the stack benchmark share: a committed copy of the project with tiny
params, `mmguard` as a subprocess, and the stack up around a block."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.stack.state import StackState
from tests.project import BIN, ROOT, SMALL, make_project, project_env

# Small data, and no Airflow retries: a failing task fails the run at once.
TINY = {**SMALL, "airflow": {"retries": 0, "retry_delay_s": 5,
                             "stages": {"train": {"retries": 0}}}}


def mmguard(*args: str, cwd: Path, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "mmguard"), *args], cwd=cwd, capture_output=True,
                            text=True, env={**project_env(), **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"mmguard {' '.join(args)} exited {result.returncode}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def commit_all(repo: Path, message: str) -> None:
    for command in (["git", "add", "-A"], ["git", "-c", "user.name=stack-test", "-c",
                                           "user.email=stack-test@localhost", "commit", "-qm",
                                           message, "--allow-empty"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)


def copy_of_project(dest: Path) -> Path:
    """The project with TINY params and its dags/, committed to a git repo of its own."""
    project = make_project(dest, TINY)
    shutil.copytree(ROOT / "dags", project / "dags",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".gitignore").write_text("/.stack/\n/data/\n/artifacts/\n/mlflow.db\n"
                                        "/airflow_home/\n")
    commit_all(project, "project under test")
    return project


@contextmanager
def running_stack() -> Iterator[StackState]:
    """A project copy with the stack up; `down` on the way out. Prints the cold start time
    (`mmguard stack up` from nothing: no data, no ports, no credentials).

    The copy lives in a folder of its own under the system temp dir, not in pytest's basetemp:
    Postgres runs as another OS user, and pytest resets its basetemp root to 0700 whenever any
    pytest session starts on the machine, which would lock the running server out of its data."""
    base = Path(tempfile.mkdtemp(prefix="mmguard-stack-"))
    project = copy_of_project(base / "project")
    # Only the runs a test triggers: unpausing would otherwise also start the latest weekly
    # interval, which (max_active_runs=1) goes first and doubles the tier's time. The stack's
    # Airflow reads this file as its airflow.cfg; the environment sets everything else.
    config = StackState.of(project).airflow_home / "airflow.cfg"
    config.parent.mkdir(parents=True)
    config.write_text("[scheduler]\nuse_job_schedule = False\n")
    begin = time.monotonic()
    try:
        up = mmguard("stack", "up", "--root", str(project), cwd=project)
        print(f"\n[stack] cold start: {time.monotonic() - begin:.1f}s\n{up.stdout}")
        yield StackState.of(project)
    finally:
        down = mmguard("stack", "down", "--root", str(project), cwd=project, check=False)
        print(down.stdout, down.stderr)
        if down.returncode == 0:
            shutil.rmtree(base, ignore_errors=True)
