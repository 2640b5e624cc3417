"""checks stage: the test-split predictions are sane before anyone may register the model.

Reads artifacts/evaluate/predictions.parquet and artifacts/shards/sizes.json; writes
artifacts/checks/report.json and stats.json. Fails on any error-level check that did not pass.
"""
from __future__ import annotations

import json

import pandas as pd

from pipeline import atomic, prediction_checks
from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.taxonomy import class_names


def report_path(paths: Paths):
    return paths.checks_dir / "report.json"


def run(params: Params, paths: Paths) -> dict:
    if not paths.predictions.exists():
        raise StageFailed(f"{paths.predictions} not found: run `mmguard evaluate` first")
    if not paths.shard_sizes.exists():
        raise StageFailed(f"{paths.shard_sizes} not found: run `mmguard shard` first")
    frame = pd.read_parquet(paths.predictions)
    sizes = json.loads(paths.shard_sizes.read_text())
    names = class_names(params.task)
    if "split" not in frame:
        raise StageFailed(f"{paths.predictions} has no split column")
    test = frame[frame["split"] == "test"].reset_index(drop=True)

    settings = params.checks
    results = prediction_checks.run_all(
        test, names, int(sizes["splits"]["test"]["samples"]),
        min_class_share=settings.min_class_share, max_class_share=settings.max_class_share,
        class_share_level=settings.class_share_level,
        sum_tolerance=settings.probability_sum_tolerance)

    failed_errors = [r.name for r in results if r.level == "error" and not r.passed]
    failed_warnings = [r.name for r in results if r.level == "warning" and not r.passed]
    report = {
        "task": params.task,
        "passed": not failed_errors,
        "failed_errors": failed_errors,
        "failed_warnings": failed_warnings,
        "checks": [r.to_dict() for r in results],
    }
    paths.checks_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(report_path(paths), json.dumps(report, indent=2))
    stats = {"checks": len(results), "passed": report["passed"],
             "failed_errors": len(failed_errors), "failed_warnings": len(failed_warnings),
             "test_rows": len(test)}
    atomic.write_text(paths.stats("checks"), json.dumps(stats, indent=2))
    if failed_errors:
        raise StageFailed(f"error-level prediction checks failed: {', '.join(failed_errors)} "
                          f"(see {report_path(paths)})")
    return stats
