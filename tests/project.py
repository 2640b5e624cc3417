"""A throwaway copy of the project (code, dvc.yaml, params) for tests that run DVC for real."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.stores import sqlite_store

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("pipeline", "dvc.yaml", "params.yaml", ".dvcignore", "pyproject.toml")
BIN = Path(sys.executable).parent

# Small enough for a test, big enough that every split keeps rows after dedupe.
SMALL = {
    "synthetic": {"items_per_task": 240},
    "train": {"epochs": 4, "batch_size": 16, "early_stopping_patience": 0},
    "validate": {"min_rows_per_split": 5},
}


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    return env


def make_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project into `dest` as its own git + DVC repo with `overrides` merged into params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = _merge(params, overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sqlite_store(dest / "mlflow.db")  # params' default store, already migrated
    env = project_env()
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                    [str(BIN / "dvc"), "config", "core.autostage", "false"]):
        subprocess.run(command, cwd=dest, env=env, check=True)
    return dest


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a project command (mmguard, dvc) with the venv on PATH; fail loudly with its output."""
    result = subprocess.run(command, cwd=cwd, env=project_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result
