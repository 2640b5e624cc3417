"""The run summary: what the stages of one retraining run wrote, in a few lines.

`mmguard run` (pipeline/orchestration/local_airflow.py) and the retrain DAG's summary task print
it; DVC decides what re-runs, Airflow runs the stages, this module only reads their stats.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import text_peer
from pipeline.paths import Paths


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _fetch_line(source: str, fetched: dict, record: Path, shown: int = 5) -> str:
    """What fetch copied from a source's folder and what it skipped (links leading out, FIFOs,
    devices, sockets), naming the first few skipped entries; the record names them all."""
    line = f"  fetch {source:<13} {fetched.get('files_copied')} files copied"
    skipped = fetched.get("skipped_entries", [])
    if skipped:
        names = ", ".join(entry["path"] for entry in skipped[:shown])
        more = f", ... ({len(skipped)} in {record})" if len(skipped) > shown else ""
        line += f"; skipped {len(skipped)} {fetched.get('skipped_by_reason')}: {names}{more}"
    return line


def _text_peer_line(peer: dict) -> str:
    """The model beside the TF-IDF text peer on the same test rows (the gate's comparison)."""
    def scores(side: dict) -> str:
        return " / ".join(f"{k} {side[k]:.4f}" if side.get(k) is not None else f"{k} undefined"
                          for k in ("auroc", "top1", "top2") if k in side)

    test, model, gain = peer.get("test", {}), peer.get("model_test", {}), peer.get("gain")
    verdict = ("gain undefined" if gain is None else f"model ahead by {gain:.4f}" if gain > 0
               else f"model BEHIND by {-gain:.4f}" if gain < 0 else "a tie")
    return (f"  vs text peer      model {scores(model)} | TF-IDF text peer {scores(test)} "
            f"(C={peer.get('c')}) on the same {test.get('samples')} test rows: {verdict}")


def summary(paths: Paths) -> str:
    ingest = _read_json(paths.stats("ingest"))
    dedupe = _read_json(paths.stats("dedupe"))
    sizes = _read_json(paths.shard_sizes)
    lines = ["", "mmguard summary"]
    for source, fetched in sorted(_read_json(paths.stats("fetch")).items()):
        lines.append(_fetch_line(source, fetched, paths.stats("fetch")))
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
    peer = _read_json(text_peer.metrics_path(paths))
    if peer:
        lines.append(_text_peer_line(peer))
    checks = _read_json(paths.checks_dir / "report.json")
    if checks:
        lines.append(f"  prediction checks {'passed' if checks.get('passed') else 'FAILED'}")
    drift = _read_json(paths.drift_dir / "drift.json")
    if drift:
        lines.append(f"  drift             dataset_drift={drift.get('dataset_drift')} "
                     f"share={drift.get('drift_share')} {drift.get('drifted_columns')}")
    return "\n".join(lines)
