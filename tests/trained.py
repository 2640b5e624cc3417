"""A tiny trained model on tiny real shards: the one training run a test session shares.

`trained_tiny` (tests/conftest.py) runs `train_once` once per session; tests that only read a
trained model, its metrics or its MLflow run use it instead of training their own.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.params import parse_params
from pipeline.paths import Paths
from tests.model.shard_writer import write_shards
from tests.stores import sqlite_store

SMALL = {"train": {0: 16, 1: 16}, "val": {0: 8, 1: 8}, "test": {0: 4, 1: 4}}
CORRUPT = {"val": 2}  # two unreadable val samples, counted on every pass


def make_params(root: Path, **train):
    base = {"epochs": 3, "batch_size": 8, "lr": 2e-3, "warmup_steps": 2, "shuffle_buffer": 16,
            "early_stopping_patience": 0, "seed": 7}
    return parse_params({"train": {**base, **train},
                         "registry": {"tracking_uri": sqlite_store(root / "mlflow.db")}})


def make_root(tmp: Path, counts=SMALL, task="hateful_memes", corrupt=None) -> Paths:
    write_shards(tmp / "artifacts" / "shards", task=task, counts=counts, per_shard=8,
                 corrupt=corrupt)
    return Paths(tmp)


def train_once(root: Path) -> tuple[Paths, dict]:
    """3 epochs of the train stage on SMALL shards under `root`: (paths, the stage's summary)."""
    from pipeline.stages import train

    paths = make_root(root, corrupt=CORRUPT)
    return paths, train.run(make_params(root), paths)
