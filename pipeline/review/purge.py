"""`mmguard review purge`: retention by age and takedown by image hash, over every copy of
captured traffic the project makes.

Places, and what happens in each:
- the capture log (`monitoring.log_uri`): by age, part files whose rows are all older go and a
  part holding both is rewritten with the newer rows only; by hash, each part holding the hash
  is rewritten without those rows (written beside it, then put in its place; a part left
  empty is deleted);
- review batches `data/review/queued/<batch>/`: by age, whole batches queued before the
  cutoff; by hash, the image file and its lines of tasks.json and manifest.jsonl;
- exports in `data/review/returned/` and `data/review/done/`: by age, files older than the
  cutoff; by hash, the tasks whose data names the hash;
- import reports `data/review/imports/<name>/`: by age, whole; by hash, quarantine lines;
- review-made incoming batches `data/incoming/review-*/` (by hash: any incoming batch line
  with that `image_sha256`) that no ingest has read yet: by age, whole; by hash, the line and
  its image. A batch the current ingest manifest (artifacts/ingest/manifest.parquet, pinned by
  dvc.lock) holds rows of has been read by the pipeline and a model may have trained on it: it
  is left as it is and named under `not_purged` with that reason, as are the copies inside
  artifacts/ (the ingest image store, shards) that only a retrain on data without the batch
  replaces.
The result counts what was removed per place.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from pipeline import atomic
from pipeline.monitoring import capture
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.review.importer import incoming_dir
from pipeline.review.queue import review_dir
from pipeline.sources import incoming

REVIEW_PREFIX = "review-"


def ingested_batches(root: Path) -> set[str]:
    """Incoming batch names the current ingest manifest holds rows of."""
    import pyarrow.parquet as pq

    manifest = Paths(Path(root)).ingest_manifest
    if not manifest.is_file():
        return set()
    table = pq.read_table(manifest, columns=["source", "source_id"]).to_pandas()
    ids = table.loc[table["source"] == incoming.SOURCE, "source_id"].astype(str)
    return {i.split("/", 1)[0] for i in ids}


# ---------------------------------------------------------------- the capture log

def _rewrite_parts(uri: str, keep) -> dict:
    """Apply `keep(frame) -> boolean mask` to every part; rewrite or delete parts that lose
    rows. Local parts are written beside the old one and renamed over it; on S3 one PUT
    replaces the object whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem, base = capture._filesystem(uri)
    removed = {"rows": 0, "parts_rewritten": 0, "parts_deleted": 0}
    if filesystem.get_file_info(base).type == fs.FileType.NotFound:
        return removed
    for info in filesystem.get_file_info(fs.FileSelector(base, recursive=True)):
        if info.type != fs.FileType.File or not info.path.endswith(".parquet") or \
                Path(info.path).name.startswith("."):
            continue
        table = pq.read_table(info.path, filesystem=filesystem)
        frame = table.to_pandas()
        mask = keep(frame)
        gone = int((~mask).sum())
        if gone == 0:
            continue
        removed["rows"] += gone
        if mask.any():
            kept = pa.Table.from_pandas(frame[mask], preserve_index=False, schema=table.schema)
            if isinstance(filesystem, fs.LocalFileSystem):
                atomic.write_with(info.path, lambda tmp: pq.write_table(kept, str(tmp)))
            else:
                pq.write_table(kept, info.path, filesystem=filesystem)
            removed["parts_rewritten"] += 1
        else:
            filesystem.delete_file(info.path)
            removed["parts_deleted"] += 1
    return removed


# ---------------------------------------------------------------- review folders

def _rewrite_json_list(path: Path, drop) -> int:
    tasks = json.loads(path.read_text())
    kept = [t for t in tasks if not drop(t)]
    if len(kept) != len(tasks):
        atomic.write_text(path, json.dumps(kept, indent=1) + "\n")
    return len(tasks) - len(kept)


def _rewrite_jsonl(path: Path, drop) -> int:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if not drop(json.loads(ln))]
    if len(kept) != len(lines):
        atomic.write_text(path, "".join(ln + "\n" for ln in kept))
    return len(lines) - len(kept)


def _task_hash(task) -> str | None:
    data = task.get("data") if isinstance(task, dict) else None
    return data.get("image_sha256") if isinstance(data, dict) else None


def _batch_time(batch: Path) -> datetime:
    stats = batch / "stats.json"
    if stats.is_file():
        value = json.loads(stats.read_text()).get("read_at")
        if value:
            return datetime.fromisoformat(value)
    return _mtime(batch)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def _folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if parent.is_dir() else []


def _exports(root: Path) -> list[Path]:
    return [p for sub in ("returned", "done") for p in
            sorted((review_dir(root) / sub).glob("*.json"))]


# ---------------------------------------------------------------- the two purges

def purge_older_than(params: Params, root: Path, days: int | None = None,
                     now: datetime | None = None) -> dict:
    root = Path(root)
    days = params.monitoring.retention_days if days is None else days
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    stamp = pd.Timestamp(cutoff)
    result = {"older_than_days": days, "cutoff": cutoff.isoformat(),
              "capture_log": _rewrite_parts(capture.log_location(params.monitoring, root),
                                            lambda f: f["time"] >= stamp),
              "queued_batches": 0, "exports": 0, "import_reports": 0, "incoming_batches": 0,
              "not_purged": []}
    for batch in _folders(review_dir(root) / "queued"):
        if _batch_time(batch) < cutoff:
            shutil.rmtree(batch)
            result["queued_batches"] += 1
    for export in _exports(root):
        if _mtime(export) < cutoff:
            export.unlink()
            result["exports"] += 1
    for report in _folders(review_dir(root) / "imports"):
        if _mtime(report / "stats.json" if (report / "stats.json").exists() else report) \
                < cutoff:
            shutil.rmtree(report)
            result["import_reports"] += 1
    read = ingested_batches(root)
    for batch in incoming.batches(incoming_dir(root)):
        if not batch.name.startswith(REVIEW_PREFIX) or _mtime(batch) >= cutoff:
            continue
        if batch.name in read:
            result["not_purged"].append(_kept(batch))
            continue
        shutil.rmtree(batch)
        result["incoming_batches"] += 1
    return result


def _kept(batch: Path) -> dict:
    return {"place": str(batch), "why": "the current ingest manifest (artifacts/ingest/, "
            "pinned by dvc.lock) holds its rows, so a model may have trained on it; delete "
            "the rows from the batch and retrain to drop them from the next model, its image "
            "store and shards"}


def _other_image(frame: pd.DataFrame, sha: str) -> pd.Series:
    if "image_sha256" not in frame:  # parts written before the hash was captured
        return pd.Series(True, index=frame.index)
    return frame["image_sha256"] != sha


def purge_image(params: Params, root: Path, image_sha256: str) -> dict:
    root = Path(root)
    sha = image_sha256.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        from pipeline.errors import StageFailed

        raise StageFailed(f"--image-sha256 {image_sha256!r}: expected 64 hex digits")
    result = {"image_sha256": sha,
              "capture_log": _rewrite_parts(capture.log_location(params.monitoring, root),
                                            lambda f: _other_image(f, sha)),
              "queued": {"rows": 0, "images": 0}, "exports": {"tasks": 0},
              "import_reports": {"rows": 0}, "incoming": {"rows": 0, "images": 0},
              "not_purged": []}
    for batch in _folders(review_dir(root) / "queued"):
        result["queued"]["rows"] += _rewrite_jsonl(batch / "manifest.jsonl",
                                                   lambda r: r.get("image_sha256") == sha)
        if (batch / "tasks.json").is_file():
            _rewrite_json_list(batch / "tasks.json", lambda t: _task_hash(t) == sha)
        for image in (batch / "images").glob(f"{sha}.*"):
            image.unlink()
            result["queued"]["images"] += 1
    for export in _exports(root):
        try:
            result["exports"]["tasks"] += _rewrite_json_list(export,
                                                             lambda t: _task_hash(t) == sha)
        except (ValueError, AttributeError):  # not a JSON list of tasks: cannot be searched
            result["not_purged"].append({"place": str(export), "why": "not a readable Label "
                                         "Studio export, so it could not be searched; check "
                                         "it by hand or delete it"})
    for report in _folders(review_dir(root) / "imports"):
        if (report / "quarantine.jsonl").is_file():
            result["import_reports"]["rows"] += _rewrite_jsonl(
                report / "quarantine.jsonl", lambda r: r.get("image_sha256") == sha)
    read = ingested_batches(root)
    for batch in incoming.batches(incoming_dir(root)):
        files = sorted(batch.glob("*.jsonl"))
        holding = [p for p in files if any(json.loads(ln).get("image_sha256") == sha
                                           for ln in p.read_text().splitlines() if ln.strip())]
        if not holding:
            continue
        if batch.name in read:
            result["not_purged"].append(_kept(batch))
            continue
        images = set()
        for path in holding:
            rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
            images |= {r.get("img") for r in rows if r.get("image_sha256") == sha}
            result["incoming"]["rows"] += _rewrite_jsonl(path,
                                                         lambda r: r.get("image_sha256") == sha)
        for image in images:
            if image and (batch / image).is_file():
                (batch / image).unlink()
                result["incoming"]["images"] += 1
    return result
