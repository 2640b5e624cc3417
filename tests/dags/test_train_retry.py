"""A train task killed mid-run and retried resumes after its last finished epoch: the retry is
what Airflow runs again (`mmguard stage train`, i.e. `dvc repro --single-item train`) in a real DVC
project, and the first attempt is a real process killed with SIGKILL."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import train as train_stage
from tests.model.shard_writer import write_shards
from tests.project import BIN, ROOT, project_env

# Two real trainings through DVC: the slow tier.
pytestmark = pytest.mark.slow

EPOCHS = 4
KILL_AFTER = 1  # epochs 0 and 1 finish and are checkpointed before the kill


def _project(root: Path) -> Path:
    write_shards(root / "artifacts" / "shards", task="hateful_memes",
                 counts={"train": {0: 16, 1: 16}, "val": {0: 8, 1: 8}, "test": {0: 4, 1: 4}},
                 per_shard=8)
    params = parse_params({
        "train": {"epochs": EPOCHS, "batch_size": 8, "warmup_steps": 2, "shuffle_buffer": 16,
                  "early_stopping_patience": 0, "seed": 7, "device": "cpu"},
        "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}})
    (root / "params.yaml").write_text(yaml.safe_dump(
        params.model_dump(mode="json", by_alias=True), sort_keys=False))
    # The repo's own train stage; code deps are left out (this folder holds no code), and so is
    # the embedding cache: the tiny random-init model has no frozen pretrained trunk to cache.
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    stage["deps"] = [d for d in stage["deps"]
                     if d.startswith("artifacts/") and d != "artifacts/embeddings"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, env=project_env(),
                   check=True)
    return root


def _epochs(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"^epoch (\d+):", output, flags=re.M)]


def test_killed_train_task_retried_resumes_without_redoing_epochs(tmp_path):
    root = _project(tmp_path / "project")
    env = {**project_env(), "OMP_NUM_THREADS": "1"}
    checkpoint = train_stage.checkpoint_dir(Paths(root))
    first = subprocess.Popen([str(BIN / "mmguard"), "stage", "train"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if line.startswith(f"epoch {KILL_AFTER}:"):
            # the checkpoint is written right after the epoch's line
            deadline = time.monotonic() + 120
            while not (checkpoint / f"epoch-{KILL_AFTER:04d}" / "state.json").exists():
                assert time.monotonic() < deadline, "no checkpoint after the epoch line"
                time.sleep(0.1)
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait(timeout=60)
    assert first.returncode != 0
    assert _epochs("".join(seen)) == list(range(KILL_AFTER + 1)), "".join(seen)[-3000:]

    retry = subprocess.run([str(BIN / "mmguard"), "stage", "train"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=900)
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    assert _epochs(retry.stdout) == list(range(KILL_AFTER + 1, EPOCHS))
    stats = json.loads((root / "artifacts/train/stats.json").read_text())
    assert stats["resumed_from_epoch"] == KILL_AFTER and stats["epochs_run"] == EPOCHS
    assert (root / "artifacts/model/model.safetensors").exists()
    assert (root / "dvc.lock").exists()  # DVC, not a bare call, ran the retry
