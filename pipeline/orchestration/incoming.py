"""The drift monitor's side of the drift → retrain loop.

New data lands as batches in `data/incoming/<batch>/` (jsonl layout). For each batch not yet
checked, the monitor ingests it on its own (the real ingest code, into a scratch root under
`artifacts/monitoring/incoming/<batch>/`, never the DVC-tracked ingest outputs) and compares it
with the champion's training reference through the drift stage's compare-two-manifests mode. No
DVC stage runs, training least of all. The record of a batch is its `drift/drift.json`; a batch
with a record is never checked again.

The champion's training reference is snapshotted when a model is promoted (`save_reference`): the
reference split of the clean manifest it trained on, its images hard-linked beside it, since the
next ingest rebuilds the image store. Before any promotion the clean manifest's reference split is
used as it stands.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.sources import incoming

# The one place the monitor calls the drift comparison (`--reference` may be left out: then the
# clean manifest's reference split is used). Its verdict is the stage's drift_verdict.verdict,
# calibrated per comparison, so a small batch is judged at the same false-alarm rate as a large
# one.
DRIFT_COMMAND = [sys.executable, "-m", "pipeline.cli", "drift"]


def monitoring_dir(paths: Paths) -> Path:
    return paths.artifacts / "monitoring"


def reference_manifest(paths: Paths) -> Path:
    from pipeline.stages.drift import champion_reference

    return champion_reference(paths)


def batch_dir(paths: Paths, batch: str) -> Path:
    return monitoring_dir(paths) / "incoming" / batch


def batch_record(paths: Paths, batch: str) -> Path:
    return batch_dir(paths, batch) / "drift" / "drift.json"


def new_batches(paths: Paths) -> list[Path]:
    return [b for b in incoming.batches(paths.source_dir(incoming.SOURCE))
            if not batch_record(paths, b.name).exists()]


def _link_or_copy(source: Path, dest: Path) -> None:
    if dest.exists():  # the store is content-addressed: rows sharing an image share its file
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, dest)


def save_reference(params: Params, paths: Paths) -> Path:
    """Snapshot the clean manifest's reference split (and its images) as the champion's."""
    from pipeline.stages.drift import read_manifest

    rows = read_manifest(paths.manifest, params.drift.reference_split)
    out = reference_manifest(paths)
    staging = out.parent.with_name(out.parent.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    rel_images = out.parent.relative_to(paths.root) / "images"
    new_paths = []
    for image_path in rows["image_path"]:
        _link_or_copy(paths.root / image_path, staging / "images" / Path(image_path).name)
        new_paths.append(str(rel_images / Path(image_path).name))
    rows = rows.assign(image_path=new_paths)
    rows.to_parquet(staging / "manifest.parquet", index=False)
    shutil.rmtree(out.parent, ignore_errors=True)
    staging.rename(out.parent)
    print(f"drift reference: {len(rows)} {params.drift.reference_split} rows -> {out}")
    return out


def ingest_batch(params: Params, paths: Paths, batch: Path) -> Path:
    """The batch through the real ingest into its scratch root; returns a manifest whose image
    paths are relative to the project root, as the drift comparison expects."""
    from pipeline.stages.ingest import ingest_records

    scratch = Paths(batch_dir(paths, batch.name))
    stats = ingest_records(incoming.read_batch(batch, params.task), params, scratch)
    print(f"batch {batch.name}: {stats['rows_in']} rows in, {stats['kept']} kept, "
          f"{stats['quarantined']} quarantined {stats['quarantined_by_reason']}")
    rows = pd.read_parquet(scratch.ingest_manifest)
    prefix = scratch.root.relative_to(paths.root)
    rows["image_path"] = [str(prefix / p) for p in rows["image_path"]]
    current = scratch.root / "current.parquet"
    rows.to_parquet(current, index=False)
    return current


def compare(paths: Paths, out: Path, params_path: Path, *side: str) -> dict:
    """Run the drift comparison of `side` (`--current FILE` or `--since WINDOW`) against the
    champion's reference snapshot (the clean manifest's reference split before any promotion)."""
    reference = reference_manifest(paths)
    command = [*DRIFT_COMMAND, "--params", str(params_path), "--root", str(paths.root),
               *side, "--out", str(out)]
    if reference.exists():
        command += ["--reference", str(reference)]
    subprocess.run(command, check=True, stdout=sys.stderr)
    return json.loads((out / "drift.json").read_text())


def check_traffic(params: Params, paths: Paths, params_path: Path, window: str) -> dict | None:
    """Drift of the traffic the served model captured in the last `window`; None without any."""
    from pipeline.monitoring import capture

    if capture.traffic_rows(params, paths.root, window) == 0:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return compare(paths, monitoring_dir(paths) / "traffic" / stamp, params_path,
                   "--since", window)


def check_new_batches(params: Params, paths: Paths,
                      params_path: Path = Path("params.yaml")) -> dict:
    """Check every batch without a record, and the served traffic of the last
    `monitoring.traffic_window`; returns {"batches": {name: drift summary}, "drifted": [names],
    "traffic": drift summary or None without traffic}. A batch ingest cannot read fails the run
    (it is not recorded)."""
    results = {}
    for batch in new_batches(paths):
        current = ingest_batch(params, paths, batch)
        results[batch.name] = compare(paths, batch_dir(paths, batch.name) / "drift",
                                      params_path, "--current", str(current))
        print(f"batch {batch.name}: {json.dumps(results[batch.name])}")
    drifted = [name for name, summary in results.items() if summary["dataset_drift"]]
    traffic = check_traffic(params, paths, params_path, params.monitoring.traffic_window)
    if traffic is not None:
        print(f"traffic of the last {params.monitoring.traffic_window}: {json.dumps(traffic)}")
    return {"batches": results, "drifted": drifted, "traffic": traffic}
