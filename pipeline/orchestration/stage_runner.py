"""`mmguard stage NAME`: what one Airflow task does for one DVC stage.

With a default DVC remote (a worker that may not share the workspace): pull exactly the
DVC-managed inputs of the stage, `dvc repro --single-item NAME`, push the stage's outputs.
Without one: just the repro. `--single-item` never re-runs another stage, and
`--wait-for-lock` makes a second dvc process queue behind the first instead of failing, so two
tasks the graph lets run side by side (checks and drift) still run their DVC work in series.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.orchestration import dvc_graph


def dvc_env() -> dict[str, str]:
    """DVC stages call `mmguard`: the running interpreter's bin folder goes first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key, value in {"DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                       "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        env.setdefault(key, value)
    return env


def dvc(*args: str, root: Path) -> None:
    command = ["dvc", "--wait-for-lock", *args]
    print(f"$ {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", *command], cwd=root, env=dvc_env(), check=True)


def default_remote(root: Path) -> str | None:
    """`core.remote` of the repo's merged DVC config (what `dvc remote default` prints), read
    in-process: one dvc start-up less per task."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote") or None


def run_stage(name: str, root: Path = Path(".")) -> None:
    stages = dvc_graph.read_stages(root)
    if name not in stages:
        raise ValueError(f"no stage {name!r} in dvc.yaml; stages: {', '.join(stages)}")
    remote = default_remote(root)
    if remote:
        wanted = dvc_graph.inputs_to_pull(root, name)
        if wanted:
            dvc("pull", *wanted, root=root)
    else:
        print("no default DVC remote: inputs come from this workspace", flush=True)
    dvc("repro", "--single-item", name, root=root)
    if remote:
        dvc("push", name, root=root)
