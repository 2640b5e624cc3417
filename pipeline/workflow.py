"""`mmguard run`: the main job on one machine — land the data if absent, `dvc repro`, register the
model in MLflow, put it through the promotion gate, summarise.

DVC decides what re-runs; this module only prepares the workspace and reports what the stages
wrote. Stages are invoked by DVC as `mmguard <stage>`, so the running interpreter's bin folder is
put first on PATH.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.sources import get_source

EMBEDDED_SOURCE = "synthetic"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key, value in {"DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                       "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        env.setdefault(key, value)
    return env


def _dvc(*args: str, root: Path) -> None:
    print(f"$ dvc {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=_env(), check=True)


def ensure_data(params: Params, paths: Paths) -> None:
    """Generate the embedded data when data/ is absent, then let DVC track it."""
    source_dir = paths.source_dir(EMBEDDED_SOURCE)
    if EMBEDDED_SOURCE in params.ingest.sources and not source_dir.exists():
        print(f"data/ has no {EMBEDDED_SOURCE} source: generating it", flush=True)
        get_source(EMBEDDED_SOURCE).fetch(source_dir, params)
    # `dvc add` is cheap when nothing changed and records the hash when it did.
    _dvc("add", "--quiet", "data", root=paths.root)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def summary(paths: Paths) -> str:
    ingest = _read_json(paths.stats("ingest"))
    dedupe = _read_json(paths.stats("dedupe"))
    sizes = _read_json(paths.shard_sizes)
    lines = ["", "mmguard summary"]
    if ingest:
        lines.append(f"  rows in           {ingest.get('rows_in')}")
        lines.append(f"  quarantined       {ingest.get('quarantined')} at ingest "
                     f"{ingest.get('quarantined_by_reason')}")
    if dedupe:
        lines.append(f"  duplicates        exact {dedupe.get('duplicates_exact')}, "
                     f"near {dedupe.get('duplicates_near')}; conflicting labels quarantined "
                     f"{dedupe.get('quarantined')}")
        lines.append(f"  kept              {dedupe.get('kept')} {dedupe.get('per_split')}")
    if sizes:
        for split, info in sizes.get("splits", {}).items():
            lines.append(f"  shards {split:<10} {len(info.get('shards', []))} "
                         f"({info.get('samples')} samples)")
    train = _read_json(paths.train_dir / "metrics.json")
    if train:
        best = {k: round(v, 4) for k, v in train.get("best", {}).items()
                if k != "val_loss" and v is not None}
        lines.append(f"  validation        best epoch {train.get('best_epoch')}: {best}")
    evaluation = _read_json(paths.evaluate_dir / "metrics.json")
    if evaluation:
        test = evaluation.get("test", evaluation)
        shown = {k: round(v, 4) for k, v in test.items()
                 if k in ("auroc", "accuracy", "f1", "top1", "top2", "macro_f1")}
        lines.append(f"  test              {shown}")
    checks = _read_json(paths.checks_dir / "report.json")
    if checks:
        lines.append(f"  prediction checks {'passed' if checks.get('passed') else 'FAILED'}")
    drift = _read_json(paths.drift_dir / "drift.json")
    if drift:
        lines.append(f"  drift             dataset_drift={drift.get('dataset_drift')} "
                     f"share={drift.get('drift_share')} {drift.get('drifted_columns')}")
    return "\n".join(lines)


def register_and_promote(params: Params, paths: Paths) -> bool:
    """Register the evaluated model as @challenger and run the gate; True when it became champion."""
    from pipeline import registry

    registry.register(params, paths)  # prints the version it registered
    return registry.promote(params, paths).promoted


def run_all(params: Params, root: Path = Path(".")) -> int:
    paths = Paths(root)
    ensure_data(params, paths)
    _dvc("repro", root=root)
    print(summary(paths), flush=True)
    register_and_promote(params, paths)
    # A model the gate refuses is a normal outcome of a run, not a failure of it.
    print("\nruns and registry: mlflow ui --backend-store-uri sqlite:///mlflow.db", flush=True)
    print("data docs: artifacts/validate/data_docs/index.html; drift: artifacts/drift/report.html",
          flush=True)
    return 0
