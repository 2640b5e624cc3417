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


def _interval(found: dict | None, signed: bool = False) -> str:
    if not found or found.get("point") is None:
        return "undefined"
    spec = "+.4f" if signed else ".4f"
    bounds = [found.get(k) for k in ("lower", "upper")]
    inside = ", ".join("nan" if b is None else format(b, spec) for b in bounds)
    return f"{format(found['point'], spec)} [{inside}]"


def _evaluation_lines(evaluation: dict) -> list[str]:
    """The served operating point and calibration, as evaluate measured them on test."""
    lines = []
    calibration = evaluation.get("calibration") or {}
    if calibration:
        def ece(key: str) -> str:
            value = calibration.get(key)
            return "undefined" if value is None else f"{value:.4f}"
        lines.append(f"  calibration       temperature {calibration.get('temperature', 1.0):.3f}"
                     f" ({calibration.get('reason', '')}); test ECE "
                     f"{ece('test_ece_before')} -> {ece('test_ece_after')}")
    points = evaluation.get("operating_points") or {}
    for point in points.get("points", []):
        primary = " (served)" if point.get("fpr_target") == points.get("primary_fpr") else ""
        if point.get("threshold") is None:
            lines.append(f"  at FPR {point['fpr_target']:<10g} no threshold: "
                         f"{point.get('reason')}")
            continue
        test = point.get("test", {})
        lines.append(f"  at FPR {point['fpr_target']:<10g} threshold {point['threshold']:.4f}"
                     f"{primary}: test recall {_interval(test.get('recall_interval'))}, "
                     f"test FPR {_interval(test.get('fpr_interval'))}")
    return lines


def _gate_lines(decision: dict) -> list[str]:
    """The gate's verdict with its interval, and what it refused on."""
    evidence = decision.get("evidence") or {}
    lines = [f"  gate              {decision.get('decision')} v{decision.get('challenger')} "
             f"(champion seen: {decision.get('champion_seen') or 'none'})"]
    for name, interval in (evidence.get("challenger") or {}).items():
        delta = (evidence.get("delta") or {}).get(name)
        versus = f", vs champion {_interval(delta, signed=True)}" if delta else ""
        lines.append(f"    {name:<15} {_interval(interval)}{versus} "
                     f"({evidence.get('level', 0):.0%} bootstrap)")
    lines += [f"    {r}" for r in decision.get("reasons", []) if r.startswith("FAIL")]
    old = evidence.get("point_estimate_rule")
    if old:
        lines.append(f"    the point-estimate rule would say "
                     f"{'promote' if old.get('promote') else 'keep'}")
    if evidence.get("report"):
        lines.append(f"    report: {evidence['report']}")
    return lines


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
        lines += _evaluation_lines(evaluation)
    peer = _read_json(text_peer.metrics_path(paths))
    if peer:
        lines.append(_text_peer_line(peer))
    checks = _read_json(paths.checks_dir / "report.json")
    if checks:
        lines.append(f"  prediction checks {'passed' if checks.get('passed') else 'FAILED'}")
    decision = _read_json(paths.artifacts / "gate" / "decision.json")
    if decision:
        lines += _gate_lines(decision)
    drift = _read_json(paths.drift_dir / "drift.json")
    if drift:
        lines.append(f"  drift             dataset_drift={drift.get('dataset_drift')} "
                     f"share={drift.get('drift_share')} {drift.get('drifted_columns')}")
    return "\n".join(lines)
