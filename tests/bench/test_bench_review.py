"""Review-queue benchmarks (make bench), printing what they measure:

- queue build (`queue.build_queue`: read the capture log, apply the policy, write the batch) on
  a planted capture log of MMGUARD_BENCH_REVIEW_ROWS (default 100,000) served rows in 40 part
  files, a tenth of them with a shadow answer and 2% repeated posts: wall time, peak RSS of
  this process, and the batch's size;
- does the queue concentrate errors? On the embedded data (the synthetic source at
  MMGUARD_BENCH_REVIEW_ITEMS items per task, default 1200, trained and evaluated by the real
  `dvc repro evaluate`), evaluate's test-split predictions are put through the queue policy
  at the served operating threshold, and the error rate of the served decision among the
  queued rows (and among the first 10, 20, 40 of them: smaller caps) is compared with the error
  rate over all rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from pipeline.operating_points import primary_point
from pipeline.params import ReviewParams, parse_params
from pipeline.review import queue
from pipeline.review.policy import Threshold, select
from tests.project import make_project, run
from tests.review.planted import NOW, jpeg, write_log

ROWS = int(os.environ.get("MMGUARD_BENCH_REVIEW_ROWS", 100_000))
ITEMS = int(os.environ.get("MMGUARD_BENCH_REVIEW_ITEMS", 1200))
PARTS = 40


def _planted_log(log, rows: int) -> None:
    rng = np.random.default_rng(0)
    thumbs = [jpeg(i, side=128) for i in range(256)]  # capture-sized thumbnails
    p = rng.beta(0.6, 0.6, rows)
    image = np.arange(rows)
    repeated = rng.random(rows) < 0.02
    image[repeated] = rng.integers(0, rows, repeated.sum())  # the same post again
    shadow_p = np.clip(p + rng.normal(0, 0.15, rows), 0, 1)
    for part, chunk in enumerate(np.array_split(np.arange(rows), PARTS)):
        frame = []
        for n in chunk:
            base = {"time": pd.Timestamp(NOW - timedelta(seconds=int(rows - n))),
                    "model_name": "mmguard-hateful_memes", "model_run_id": "r",
                    "score_id": f"req{n}:0",
                    "image_sha256": hashlib.sha256(b"%d" % image[n]).hexdigest(),
                    "thumbnail": thumbs[image[n] % 256], "text": f"caption {image[n]}",
                    "width": 128, "height": 128}
            for role, version, q in (("served", "3", p[n]), ("shadow", "4", shadow_p[n])):
                if role == "shadow" and n % 10:
                    continue
                probs = {"not_hateful": 1 - float(q), "hateful": float(q)}
                frame.append(base | {"role": role, "model_version": version,
                                     "prediction": max(probs, key=probs.get),
                                     "confidence": max(probs.values()),
                                     "probabilities": json.dumps(probs)})
        write_log(log, frame, part=f"part-{part:03d}")


def test_queue_build_time_and_size_on_100k_captured_rows(tmp_path):
    _planted_log(tmp_path / "artifacts/monitoring/log", ROWS)
    params = parse_params({})
    start = time.perf_counter()
    stats = queue.build_queue(params, tmp_path, "7d", now=NOW)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = tmp_path / "data/review/queued" / stats["batch"].rsplit("/", 1)[-1]
    size = sum(f.stat().st_size for f in batch.rglob("*") if f.is_file())
    print(f"\nreview queue over {stats['rows_read']:,} served rows "
          f"({stats['shadow_rows']:,} shadow): {seconds:.1f} s, peak RSS {peak_mib:.0f} MiB; "
          f"picked {stats['picked']}, over cap {stats['over_cap']}, duplicates "
          f"{stats['duplicates']:,}, confident not sampled {stats['confident_not_sampled']:,}; "
          f"batch {len(list((batch / 'images').iterdir()))} images, {size / 2**20:.2f} MiB")
    assert stats["rows_read"] == ROWS
    assert sum(stats["picked"].values()) == params.review.max_items


def test_the_queue_concentrates_errors_on_the_embedded_data(tmp_path):
    root = make_project(tmp_path / "project", {"synthetic": {"items_per_task": ITEMS}})
    for command in (["mmguard", "fetch", "--source", "synthetic"], ["dvc", "add", "data"]):
        run(command, root)
    start = time.perf_counter()
    run(["dvc", "repro", "evaluate"], root)
    trained_s = time.perf_counter() - start
    predictions = pd.read_parquet(root / "artifacts/evaluate/predictions.parquet")
    metrics = json.loads((root / "artifacts/evaluate/metrics.json").read_text())
    threshold = float(primary_point(metrics["operating_points"])["threshold"])
    test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    p = test["prob_hateful"].to_numpy()
    served = pd.DataFrame({
        "time": pd.Timestamp(NOW), "score_id": test["id"], "model_version": "1",
        "model_name": "m", "image_sha256": [hashlib.sha256(i.encode()).hexdigest()
                                            for i in test["id"]],
        "thumbnail": [b""] * len(test), "text": test["id"],
        "prediction": np.where(p >= 0.5, "hateful", "not_hateful"),
        "confidence": np.maximum(p, 1 - p),
        "probabilities": [json.dumps({"not_hateful": 1 - x, "hateful": x}) for x in p]})
    no_shadow = pd.DataFrame(columns=["score_id", "prediction", "model_version"])
    settings = ReviewParams()
    picked, counts = select(served, no_shadow, ("not_hateful", "hateful"),
                            {"1": Threshold(threshold, "evaluate's primary operating point")},
                            settings)
    wrong = pd.Series((p >= threshold).astype(int) != test["label"].to_numpy(), index=test["id"])
    queued = wrong[picked["score_id"]]
    by_reason = {r: (int(len(g)), float(wrong[g["score_id"]].mean()))
                 for r, g in picked.groupby("reason")}
    print(f"\nembedded data, {ITEMS} items per task, `dvc repro evaluate` {trained_s:.0f} s; "
          f"test split {len(test)} rows, served threshold {threshold:.3f} (band "
          f"{settings.band}): error rate of the served decision {wrong.mean():.3f} over all "
          f"rows ({int(wrong.sum())} errors), {queued.mean():.3f} over the {len(queued)} "
          f"queued rows ({int(queued.sum())} errors, {queued.mean() / wrong.mean():.1f}x); "
          f"per reason (rows, error rate): {by_reason}; errors caught "
          f"{int(queued.sum())}/{int(wrong.sum())}")
    # a smaller review.max_items keeps the head of that order: the rows nearest the threshold
    for cap in (10, 20, 40):
        head = wrong[picked["score_id"][:cap]]
        print(f"  review.max_items={cap}: error rate {head.mean():.3f} "
              f"({int(head.sum())} of {cap}, {head.mean() / wrong.mean():.1f}x)")
    assert queued.mean() > wrong.mean()
