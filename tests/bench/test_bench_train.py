"""Training throughput and peak memory, LoRA vs full fine-tune on the same config and data.
Each variant runs the real train stage in its own process, so the peak RSS (CPU) or max-allocated
(CUDA) figure belongs to that variant alone. Run with `make bench`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.model.shard_writer import write_shards

EPOCHS = int(os.environ.get("BENCH_TRAIN_EPOCHS", "1"))
TRAIN_PER_CLASS = int(os.environ.get("BENCH_TRAIN_PER_CLASS", "128"))


def _train(root: Path, finetune: str) -> dict:
    params = {"model": {"finetune": finetune},
              "train": {"epochs": EPOCHS, "batch_size": 32, "early_stopping_patience": 0},
              "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--params",
                           str(root / "params.yaml"), "--root", str(root)],
                          capture_output=True, text=True, env=env, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "artifacts" / "train" / "stats.json").read_text())


def test_lora_vs_full_finetune_throughput_and_memory(tmp_path):
    results = {}
    for finetune in ("lora", "full"):
        root = tmp_path / finetune
        counts = {"train": {0: TRAIN_PER_CLASS, 1: TRAIN_PER_CLASS},
                  "val": {0: 32, 1: 32}, "test": {0: 8, 1: 8}}
        write_shards(root / "artifacts" / "shards", counts=counts, per_shard=64)
        results[finetune] = _train(root, finetune)
    print(f"\ntrain, tiny model, {2 * TRAIN_PER_CLASS} samples/epoch, batch 32, {EPOCHS} epoch(s):")
    for name, stats in results.items():
        params = stats["parameters"]
        print(f"  {name:5s} trainable {params['trainable']:>9,d} / {params['total']:,d}  "
              f"{stats['samples_per_s']:7.1f} samples/s  peak {stats['peak_memory_mb']:7.0f} MB "
              f"({stats['device']})")
    ratio = results["lora"]["samples_per_s"] / results["full"]["samples_per_s"]
    print(f"  LoRA / full samples/s: {ratio:.2f}x")
    assert results["lora"]["parameters"]["trainable"] < results["full"]["parameters"]["trainable"]
