"""How often does each gate rule promote a model that is not better? Run with `make bench`
(or `pytest tests/bench/test_bench_gate.py -s`).

Two measurements, both printing promote rates for the point-estimate rule (the gate before
intervals: `decide_point_estimate`, regression_tolerance 0.01) and the bootstrap rule
(`decide`, the defaults: 95% paired intervals, min_delta 0):

1. Real training. The tiny model trained on the same data and config with seeds 0..N (N =
   BENCH_GATE_SEEDS, default 10), each evaluated by the real evaluate stage (temperature fitted
   on val, the FPR 0.05 threshold chosen on val); retrain k+1 is gated against champion k on the
   same 90 test rows (the default run's size). The data is deliberately noisy so that AUROC is
   far from 1: each item shows its label in its colour and in its word with probability 0.7
   each, independently. None of the challengers is better by construction, so every promotion
   promotes a model that is not better.
2. Simulation (many more pairs, fast). Two models' logits on the same rows: z = s * y +
   sqrt(rho) * u + sqrt(1 - rho) * e, with u shared by both models (how hard the row is) and e
   each model's own noise; s = 1.2 (AUROC about 0.8), rho = 0.5. "Equal": both have s = 1.2.
   "Better": the challenger has s = 1.6 (AUROC + about 0.06), to show what the new rule gives up.
   Thresholds at FPR 0.05 on a separate val draw of the same size.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from pipeline.operating_points import flags, fpr_threshold, primary_point
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.registry import GateRows, ModelRows, decide, decide_point_estimate
from tests.model.shard_writer import COLOURS, WORDS, key_of

SEEDS = int(os.environ.get("BENCH_GATE_SEEDS", "10"))
PAIRS = int(os.environ.get("BENCH_GATE_PAIRS", "400"))
PEER = {"auroc": 0.0}  # not what this bench measures
GATE = parse_params({}).registry.gate
COUNTS = {"train": 200, "val": 90, "test": 90}
SHOWN = 0.7  # chance that an item's colour (and, independently, its word) shows its label


def noisy_sample(split: str, index: int, label: int, rng: random.Random) -> dict:
    colour = COLOURS[label if rng.random() < SHOWN else 1 - label]
    word = WORDS[label if rng.random() < SHOWN else 1 - label]
    jitter = [max(0, min(255, c + rng.randint(-40, 40))) for c in colour]
    buffer = io.BytesIO()
    Image.new("RGB", (40 + rng.randint(0, 8), 40), tuple(jitter)).save(buffer, "JPEG",
                                                                         quality=90)
    item_id = f"bench:{split}.{index}"
    names = ("not_hateful", "hateful")
    return {"__key__": key_of(item_id), "jpg": buffer.getvalue(),
            "txt": f"a {word} post number {index}".encode(), "cls": str(label).encode(),
            "json": json.dumps({"id": item_id, "source": "bench", "split": split,
                                "label": label, "label_name": names[label],
                                "valid_pair": label == 0}).encode()}


def write_noisy_shards(root: Path) -> None:
    rng = random.Random(0)
    splits, per_class = {}, {}
    for split, n in COUNTS.items():
        samples = [noisy_sample(split, i, i % 2, rng) for i in range(n)]
        groups = ({f"train/class_{k}": [s for s in samples if s["cls"] == str(k).encode()]
                   for k in (0, 1)} if split == "train" else {split: samples})
        for folder, items in groups.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            with wds.TarWriter(str(root / folder / "shard-000000.tar")) as sink:
                for item in items:
                    sink.write(item)
            if split == "train":
                per_class[folder[-1]] = {"samples": len(items),
                                         "shards": [f"{folder}/shard-000000.tar"]}
        splits[split] = {"samples": n, "shards": (
            [s for c in per_class.values() for s in c["shards"]] if split == "train"
            else [f"{split}/shard-000000.tar"])}
    splits["train"]["per_class"] = per_class
    (root / "sizes.json").write_text(json.dumps({
        "task": "hateful_memes", "class_names": ["not_hateful", "hateful"], "splits": splits}))


def train_and_evaluate(base: Path, seed: int) -> tuple[ModelRows, np.ndarray]:
    from pipeline.stages import evaluate, train

    root = base / f"seed{seed}"
    shutil.copytree(base / "shards", root / "artifacts" / "shards")
    params = parse_params({"train": {"seed": seed, "epochs": 4, "batch_size": 16, "lr": 2e-3,
                                     "warmup_steps": 2, "early_stopping_patience": 0},
                           "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}})
    paths = Paths(root)
    train.run(params, paths)
    evaluate.run(params, paths)
    metrics = json.loads((paths.evaluate_dir / "metrics.json").read_text())
    point = primary_point(metrics["operating_points"])
    test = pd.read_parquet(paths.predictions).query("split == 'test'").sort_values("id")
    probs = test[["prob_not_hateful", "prob_hateful"]].to_numpy()
    return ModelRows(probs, flags(probs[:, 1], point["threshold"]), point["fpr_target"]), \
        test["label"].to_numpy()


def both_rules(labels: np.ndarray, new: ModelRows, old: ModelRows) -> tuple[bool, bool, float]:
    promoted, _, evidence = decide("hateful_memes", GATE, True, GateRows(labels, new, old),
                                   text_peer=PEER)
    return evidence["point_estimate_rule"]["promote"], promoted, evidence["delta"]["auroc"]


@pytest.mark.timeout(3600)  # 11 trainings: about 15 minutes on 2 busy cores
def test_real_retrains_of_one_config(tmp_path):
    write_noisy_shards(tmp_path / "shards")
    models, labels = [], None
    for seed in range(SEEDS + 1):
        rows, labels = train_and_evaluate(tmp_path, seed)
        models.append(rows)
    print(f"\ngate decisions, tiny model retrained with seeds 0..{SEEDS} on the same data "
          f"({COUNTS['test']} test rows); seed k+1 against champion seed k:")
    old_count = new_count = 0
    for k in range(SEEDS):
        old, new, delta = both_rules(labels, models[k + 1], models[k])
        old_count, new_count = old_count + old, new_count + new
        print(f"  seed {k + 1} vs {k}: AUROC difference {delta['point']:+.4f} "
              f"[{delta['lower']:+.4f}, {delta['upper']:+.4f}]  point-estimate rule "
              f"{'promote' if old else 'keep':7s}  bootstrap rule "
              f"{'promote' if new else 'keep'}")
    print(f"  promoted a model that is not better: point-estimate rule {old_count}/{SEEDS}, "
          f"bootstrap rule {new_count}/{SEEDS}")
    assert new_count <= old_count


def simulate(n: int, pairs: int, s_new: float, seed: int = 0, s_old: float = 1.2,
             rho: float = 0.5) -> tuple[float, float]:
    """(point-estimate rule, bootstrap rule) promote rates over `pairs` simulated gate runs."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    old_count = new_count = 0
    for _ in range(pairs):
        shared = np.sqrt(rho) * rng.normal(size=n)  # how hard each test row is, for both
        rows = []
        for strength in (s_new, s_old):
            val = 1 / (1 + np.exp(-(strength * labels + rng.normal(size=n))))
            threshold = fpr_threshold(labels, val, 0.05)
            z = strength * labels + shared + np.sqrt(1 - rho) * rng.normal(size=n)
            p = 1 / (1 + np.exp(-z))
            rows.append(ModelRows(np.stack([1 - p, p], 1), flags(p, threshold), 0.05))
        old, new, _ = both_rules(labels, rows[0], rows[1])
        old_count, new_count = old_count + old, new_count + new
    return old_count / pairs, new_count / pairs


def test_simulated_equal_and_better_models():
    print(f"\nsimulated gate decisions, {PAIRS} pairs each (noise model in the module "
          "docstring):")
    for n in (90, 200):
        for label, s_new in (("equal (not better)", 1.2), ("better (+0.4 signal)", 1.6)):
            old, new = simulate(n, PAIRS, s_new)
            print(f"  {n:4d} test rows, challenger {label:21s} promoted: point-estimate "
                  f"rule {old:6.1%}, bootstrap rule {new:6.1%}")
            if s_new == 1.2:
                assert new < old
