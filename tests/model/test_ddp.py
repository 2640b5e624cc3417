"""The train stage under `torchrun --nproc_per_node=2` (gloo on CPU): both ranks finish, rank 0
writes a model that loads, and validation counted every val sample once across the two ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.model import load_model
from tests.model.shard_writer import write_shards
from tests.stores import sqlite_store

TORCHRUN = Path(sys.executable).with_name("torchrun")
ROOT = Path(__file__).resolve().parents[2]  # the checkout, whatever the working directory


@pytest.mark.slow  # two processes training: a minute and more on 2 cores
def test_torchrun_two_processes_train_one_epoch(tmp_path):
    write_shards(tmp_path / "artifacts" / "shards",
                 counts={"train": {0: 16, 1: 16}, "val": {0: 5, 1: 6}, "test": {0: 2, 1: 2}},
                 per_shard=8, corrupt={"val": 1})
    params = {"train": {"epochs": 1, "batch_size": 8, "warmup_steps": 1, "device": "cpu"},
              "registry": {"tracking_uri": sqlite_store(tmp_path / "mlflow.db")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli", "train",
         "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"rank": 1' in done.stdout and '"finished": true' in done.stdout
    stats = json.loads((tmp_path / "artifacts" / "train" / "stats.json").read_text())
    assert stats["world_size"] == 2
    # 32 train samples / (8 a batch × 2 ranks) = 2 steps on each rank
    assert stats["steps_per_epoch"] == 2 and stats["global_steps"] == 2
    # every val sample scored once over both ranks; the corrupt one skipped and counted once
    assert stats["samples_val"] == 11 and stats["skipped_val"] == 1
    model = load_model(tmp_path / "artifacts" / "model")
    assert model.task == "hateful_memes"
