"""Empty MLflow SQLite stores for tests, copied from one migrated per session.

Opening a new SQLite store runs MLflow's schema migrations: 10–20 s on 2 cores, which used to be
most of the time of every registry, serving and training test. A copy of a migrated store is the
same file and costs well under a second.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _template() -> Path:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mmguard-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the migrations
    return path


def sqlite_store(path: Path) -> str:
    """The URI of an empty, migrated store at `path` (left as it is when it already exists)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"
