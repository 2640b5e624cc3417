"""Frozen vs LoRA vs full fine-tune of the pretrained towers (`minilm-effnet-lite0`) on the
embedded synthetic data, side by side in one run: train samples/s, wall time of embed + train,
and test AUROC, with the TF-IDF text peer on the same test rows. Run with `make bench`.

Sizes: BENCH_TOWERS_ITEMS items per task (default: the committed params, 600) and
BENCH_TOWERS_EPOCHS epochs (default 3: full fine-tuning on 2 CPU cores runs at a few samples/s).
"""
from __future__ import annotations

import os
import shutil
import time

from pipeline.params import load_params
from pipeline.paths import Paths
from pipeline.sources import synthetic
from pipeline.stages import dedupe, embed, evaluate, ingest, shard, text_peer, train
from tests.project import make_project

EPOCHS = int(os.environ.get("BENCH_TOWERS_EPOCHS", "3"))
ITEMS = os.environ.get("BENCH_TOWERS_ITEMS")
MODES = ("frozen", "lora", "full")


def _data_project(root):
    overrides = {"train": {"epochs": EPOCHS, "early_stopping_patience": 0}}
    if ITEMS:
        overrides["synthetic"] = {"items_per_task": int(ITEMS)}
    project = make_project(root, overrides)
    params, paths = load_params(project / "params.yaml"), Paths(project)
    synthetic.fetch(paths.source_dir("synthetic"), params)
    for stage in (ingest, dedupe, shard):
        stage.run(params, paths)
    return project


def _mode(base, root, mode: str) -> dict:
    shutil.copytree(base, root, symlinks=True)
    params = load_params(root / "params.yaml")
    params = params.model_copy(update={"model": params.model.model_copy(
        update={"finetune": mode})})
    paths = Paths(root)
    started = time.perf_counter()
    embedded = embed.run(params, paths)
    trained = train.run(params, paths)
    wall = time.perf_counter() - started
    scored = evaluate.run(params, paths)
    peer = text_peer.run(params, paths)
    return {"samples_per_s": trained["samples_per_s"], "wall_s": wall,
            "embed_s": embedded.get("seconds", 0.0),
            "trainable": trained["parameters"]["trainable"],
            "auroc": scored["test"]["auroc"], "peer": peer}


def test_frozen_lora_full_side_by_side(tmp_path):
    base = _data_project(tmp_path / "data")
    results = {mode: _mode(base, tmp_path / mode, mode) for mode in MODES}
    peer = results["frozen"]["peer"]
    print(f"\npretrained towers minilm-effnet-lite0, {EPOCHS} epochs, embedded data "
          f"({ITEMS or 'committed'} items per task), test split:")
    print(f"  {'mode':7s} {'trainable':>10s} {'samples/s':>10s} {'embed+train s':>14s} "
          f"{'test AUROC':>10s}")
    for mode, row in results.items():
        print(f"  {mode:7s} {row['trainable']:>10,d} {row['samples_per_s']:>10.1f} "
              f"{row['wall_s']:>14.1f} {row['auroc']:>10.4f}")
    print(f"  text peer (TF-IDF char n-grams + LR) on the same test rows: {peer['metric']} "
          f"{peer['text_peer']:.4f} (C={peer['c']}); gain of each mode over it: "
          + ", ".join(f"{m} {r['auroc'] - peer['text_peer']:+.4f}" for m, r in results.items()))
    assert results["frozen"]["trainable"] < results["lora"]["trainable"] < \
        results["full"]["trainable"]
