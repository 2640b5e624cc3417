"""`mmguard stage NAME`: what one Airflow task does for one DVC stage.

With a default DVC remote (a worker that may not share the workspace): pull exactly the
DVC-managed inputs of the stage, `dvc repro --single-item NAME`, push the stage's outputs.
Without one, or in a run whose tasks all share this workspace (`MMGUARD_ONE_WORKSPACE=1`, set by
`mmguard run`: the inputs are already here and the DAG's push task sends every output to the
remote once, at the end): just the repro. `--single-item` never re-runs another stage, and
`--wait-for-lock` makes a second dvc process queue behind the first instead of failing, so two
tasks the graph lets run side by side (checks and drift) still run their DVC work in series.

DVC runs inside this process (its own command-line entry point, as `python -m dvc` would): one
interpreter start and one import of DVC per task instead of one per DVC command.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from pipeline.orchestration import dvc_graph

ONE_WORKSPACE = "MMGUARD_ONE_WORKSPACE"


class DvcFailed(RuntimeError):
    def __init__(self, command: list[str], returncode: int):
        super().__init__(f"{' '.join(command)} exited {returncode}")
        self.command, self.returncode = command, returncode


def dvc_env() -> dict[str, str]:
    """DVC stages call `mmguard`: the running interpreter's bin folder goes first on PATH."""
    env = dict(os.environ)
    bin_dir, path = str(Path(sys.executable).parent), env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:  # once, however many DVC commands this task runs
        env["PATH"] = f"{bin_dir}{os.pathsep}{path}"
    for key, value in {"DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                       "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        env.setdefault(key, value)
    return env


def dvc(*args: str, root: Path) -> None:
    """One DVC command in this process; DVC's own output goes to this task's log."""
    from dvc.cli import main

    command = ["dvc", "--wait-for-lock", *args]
    print(f"$ {' '.join(command)}", flush=True)
    os.environ.update(dvc_env())  # the stage commands DVC starts inherit this environment
    with contextlib.chdir(root):
        returncode = main(command[1:])
    if returncode != 0:
        raise DvcFailed(command, returncode)


def one_workspace() -> bool:
    return os.environ.get(ONE_WORKSPACE) == "1"


def default_remote(root: Path) -> str | None:
    """`core.remote` of the repo's merged DVC config (what `dvc remote default` prints)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote") or None


def run_stage(name: str, root: Path = Path(".")) -> None:
    stages = dvc_graph.read_stages(root)
    if name not in stages:
        raise ValueError(f"no stage {name!r} in dvc.yaml; stages: {', '.join(stages)}")
    remote = None if one_workspace() else default_remote(root)
    if remote:
        wanted = dvc_graph.inputs_to_pull(root, name)
        if wanted:
            dvc("pull", *wanted, root=root)
    elif one_workspace():
        print(f"{ONE_WORKSPACE}=1: every task of this run shares this workspace, so the inputs "
              "are here; outputs go to the DVC remote in the run's push task", flush=True)
    else:
        print("no default DVC remote: inputs come from this workspace", flush=True)
    dvc("repro", "--single-item", name, root=root)
    if remote:
        dvc("push", name, root=root)
