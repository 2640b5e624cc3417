"""ingest: every raw record from data/ becomes a manifest row or a quarantine row with a reason.

Per record (in a process pool, results kept in input order): parse problem → text → label →
image. Then across records: repeated ids. Nothing is dropped silently: any exception while
examining one record makes that record an `internal_error` quarantine row and the stage goes on,
and the records pulled from the sources are counted as they are read, then checked against the
rows actually written to the manifest and the quarantine.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import atomic, contracts, images, taxonomy, text
from pipeline.errors import StageFailed
from pipeline.params import Params, SplitFractions
from pipeline.paths import SPLITS, Paths
from pipeline.sources.base import RawRecord
from pipeline.workers import process_pool

STAGE = "ingest"

MANIFEST_SCHEMA = contracts.MANIFEST
QUARANTINE_SCHEMA = contracts.QUARANTINE


@dataclass(frozen=True)
class _Settings:
    task: str
    max_text_chars: int
    limits: images.ImageLimits
    split_fractions: SplitFractions
    store_dir: Path
    root: Path
    data_dir: Path  # images of records that name no folder of their own must lie in here


@dataclass
class Outcome:
    """What became of one record: `row` for a manifest candidate, else `reason` + `detail`."""
    id: str
    source: str
    source_id: str
    split: str
    row: dict | None = None
    reason: str | None = None
    detail: str | None = None
    text_truncated: bool = False
    extension_mismatch: bool = False

    def quarantine(self, reason: str, detail: str) -> None:
        self.row, self.reason, self.detail = None, reason, detail

    def quarantine_row(self) -> dict:
        row = {"id": self.id, "source": self.source, "source_id": self.source_id,
               "split": self.split, "stage": STAGE, "reason": self.reason, "detail": self.detail}
        return {key: writable(value) for key, value in row.items()}


def writable(value: object) -> str | None:
    """A string Parquet can hold: lone surrogates (from JSON escapes such as "\\ud800") cannot
    be written as UTF-8, so they are spelt out as escapes."""
    if value is None:
        return None
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


MAX_ID_CHARS = 512


def id_problem(record_id: str) -> str | None:
    """Why an id cannot be carried through the pipeline (manifest, shards, reports), or None.
    Lone surrogates cannot be written as UTF-8; control characters (NUL, newlines, escapes)
    break every line-oriented report that names the id."""
    if len(record_id) > MAX_ID_CHARS:
        return f"the id has {len(record_id)} characters, over {MAX_ID_CHARS}"
    for char in record_id:
        category = unicodedata.category(char)
        if category == "Cs":
            return "the id holds a lone surrogate, which no UTF-8 file can store"
        if category == "Cc":
            return f"the id holds the control character {char!r}"
    return None


def split_for_id(record_id: str, fractions: SplitFractions) -> str:
    """A split from a stable hash of the id: the same id lands in the same split on every run."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions.train:
        return "train"
    if position < fractions.train + fractions.val:
        return "val"
    return "test"


def examine(record: RawRecord, settings: _Settings) -> Outcome:
    """Check and normalise one record. Never raises: whatever goes wrong becomes its reason."""
    try:
        return _examine(record, settings)
    except Exception as exc:  # noqa: BLE001 - one odd record must not stop the stage
        outcome = Outcome(writable(f"{record.source}:{record.source_id}"), writable(record.source),
                          writable(record.source_id), writable(record.split) or "unknown")
        outcome.quarantine("internal_error", f"{type(exc).__name__} while examining this "
                                             "record")
        return outcome


def _examine(record: RawRecord, settings: _Settings) -> Outcome:
    record_id = f"{record.source}:{record.source_id}"
    problem = id_problem(record_id)
    if problem:
        outcome = Outcome(writable(record_id[:MAX_ID_CHARS]), record.source,
                          writable(record.source_id[:MAX_ID_CHARS]), record.split or "unknown")
        outcome.quarantine("invalid_id", problem)
        return outcome
    split = record.split or split_for_id(record_id, settings.split_fractions)
    outcome = Outcome(record_id, record.source, record.source_id, split)
    if record.problem:
        reason, _, detail = record.problem.partition(": ")
        outcome.quarantine(reason, detail or reason)
        return outcome
    try:
        cleaned = text.clean(record.text, settings.max_text_chars)
        label, label_name = taxonomy.map_label(record.source, record.raw_label, settings.task)
        stored = images.store(record.image_path, record.image_root or settings.data_dir,
                              settings.store_dir, settings.root, settings.limits)
    except (text.TextRejected, images.ImageRejected) as exc:
        outcome.quarantine(exc.reason, exc.detail)
        return outcome
    except taxonomy.UnknownLabel as exc:
        outcome.quarantine("unknown_label", str(exc))
        return outcome
    outcome.text_truncated = cleaned.truncated
    outcome.extension_mismatch = stored.extension_mismatch
    outcome.row = {
        "id": record_id, "source": record.source, "source_id": record.source_id,
        "task": settings.task, "split": split, "image_path": stored.relative_path,
        "image_sha256": stored.sha256, "width": stored.width, "height": stored.height,
        "phash": stored.phash, "text": cleaned.text, "label": label, "label_name": label_name,
        "valid_pair": taxonomy.is_valid_pair(settings.task, label),
    } | (record.groups or {})
    return outcome


def examine_all(records: Iterable[RawRecord], settings: _Settings, workers: int) -> list[Outcome]:
    """examine() over every record, in input order, with a progress bar."""
    check = partial(examine, settings=settings)
    progress = partial(tqdm, desc="ingest", unit="rec", mininterval=1.0)
    if workers <= 1:
        return list(progress(map(check, records)))
    with process_pool(workers, STAGE) as ordered_map:
        return list(progress(ordered_map(check, records)))


def resolve_repeated_ids(outcomes: list[Outcome]) -> None:
    """Same id again with the same label: later rows are `duplicate_id`. Same id with different
    labels: no row can be trusted, so all of them become `conflicting_labels`."""
    by_id: dict[str, list[int]] = {}
    for position, outcome in enumerate(outcomes):
        if outcome.row is not None:
            by_id.setdefault(outcome.id, []).append(position)
    for record_id, positions in by_id.items():
        if len(positions) < 2:
            continue
        labels = sorted({outcomes[p].row["label_name"] for p in positions})
        if len(labels) > 1:
            for p in positions:
                outcomes[p].quarantine("conflicting_labels", f"id {record_id} appears "
                                       f"{len(positions)} times with labels {labels}")
            continue
        first = outcomes[positions[0]]
        for p in positions[1:]:
            outcomes[p].quarantine("duplicate_id", f"repeats {record_id} (first seen as input "
                                   f"row {positions[0] + 1}, split {first.split})")


def _write_table(rows: list[dict], schema: pa.Schema, dest: Path) -> None:
    rows = sorted(rows, key=lambda row: (row["id"], row.get("reason") or ""))
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic.write_with(dest, lambda tmp: pq.write_table(table, tmp))


class _Counted:
    """Counts the records as the sources yield them: the conservation check's input side, kept
    apart from everything derived from the outcomes."""

    def __init__(self, records: Iterable[RawRecord]):
        self._records = records
        self.count = 0

    def __iter__(self) -> Iterator[RawRecord]:
        for record in self._records:
            self.count += 1
            yield record


def _check_conservation(records_read: int, paths: Paths) -> None:
    kept = pq.ParquetFile(paths.ingest_manifest).metadata.num_rows
    quarantined = pq.ParquetFile(paths.ingest_quarantine).metadata.num_rows
    if records_read != kept + quarantined:  # not `assert`: -O removes it
        raise StageFailed(f"ingest lost rows: {records_read} records read, {kept} written to "
                          f"the manifest and {quarantined} to the quarantine")


def _stats(outcomes: list[Outcome], task: str) -> dict:
    kept = [o for o in outcomes if o.row is not None]
    rejected = [o for o in outcomes if o.row is None]
    per_source: dict[str, dict[str, int]] = {}
    for outcome in outcomes:
        counts = per_source.setdefault(outcome.source, {"rows_in": 0, "kept": 0, "quarantined": 0})
        counts["rows_in"] += 1
        counts["kept" if outcome.row is not None else "quarantined"] += 1
    split_counts = Counter(o.split for o in kept)
    return {
        "task": task,
        "rows_in": len(outcomes),
        "kept": len(kept),
        "quarantined": len(rejected),
        "quarantined_by_reason": dict(sorted(Counter(o.reason for o in rejected).items())),
        "text_truncated": sum(o.text_truncated for o in kept),
        "extension_mismatch": sum(o.extension_mismatch for o in kept),
        "per_split": {split: split_counts.get(split, 0) for split in SPLITS},
        "per_class": taxonomy.counts_by_name(task, [o.row["label"] for o in kept]),
        "per_source": dict(sorted(per_source.items())),
    }


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ingest_records(records: Iterable[RawRecord], params: Params, paths: Paths,
                   workers: int | None = None) -> dict:
    """The stage body over any records; run() feeds it from the sources in params.ingest."""
    # Stale images from an earlier run would no longer match the manifest.
    shutil.rmtree(paths.image_store, ignore_errors=True)
    paths.image_store.mkdir(parents=True, exist_ok=True)
    settings = _Settings(
        task=params.task,
        max_text_chars=params.ingest.max_text_chars,
        limits=images.ImageLimits(params.ingest.max_image_pixels, params.ingest.min_image_side,
                                  params.ingest.max_image_bytes),
        split_fractions=params.ingest.splits,
        store_dir=paths.image_store,
        root=paths.root,
        data_dir=paths.data,
    )
    if workers is None:
        workers = params.ingest.workers or default_workers()
    counted = _Counted(records)
    outcomes = examine_all(counted, settings, workers)
    resolve_repeated_ids(outcomes)

    kept = [o.row for o in outcomes if o.row is not None]
    # a grouping column is written when some source gave it (null for the others' rows)
    grouping = [c for c in contracts.GROUPING_COLUMNS if any(r.get(c) is not None for r in kept)]
    _write_table(kept, contracts.manifest_schema(grouping), paths.ingest_manifest)
    _write_table([o.quarantine_row() for o in outcomes if o.row is None], QUARANTINE_SCHEMA,
                 paths.ingest_quarantine)
    _check_conservation(counted.count, paths)
    stats = _stats(outcomes, params.task)
    atomic.write_json(paths.stats(STAGE), stats)
    if stats["rows_in"] == 0:
        raise StageFailed("ingest read no records: the sources in ingest.sources are empty")
    if stats["kept"] == 0:
        raise StageFailed(f"ingest kept no rows; all {stats['rows_in']} were quarantined "
                          f"(see {paths.ingest_quarantine}): {stats['quarantined_by_reason']}")
    return stats


def read_sources(params: Params, paths: Paths) -> Iterator[RawRecord]:
    """Records of every source in ingest.sources that feeds params.task, source by source.

    Folders are checked before anything is read, so a missing one fails fast.
    """
    from pipeline.sources import get_source

    feeding = [s for s in params.ingest.sources if params.task in taxonomy.SOURCE_TASKS[s]]
    if not feeding:
        allowed = [s for s, tasks in taxonomy.SOURCE_TASKS.items() if params.task in tasks]
        raise StageFailed(f"none of ingest.sources {list(params.ingest.sources)} feeds task "
                          f"{params.task!r}; sources that do: {allowed}")
    for source in feeding:
        folder = paths.source_dir(source)
        if not folder.is_dir():
            raise StageFailed(f"{folder} not found: run `mmguard fetch --source {source}` first")
    modules = {source: get_source(source) for source in feeding}
    return _chained(modules, params.task, paths)


def _chained(modules: dict, task: str, paths: Paths) -> Iterator[RawRecord]:
    for source, module in modules.items():
        try:
            yield from module.read(paths.source_dir(source), task)
        except FileNotFoundError as exc:
            raise StageFailed(f"source {source}: {exc} (run `mmguard fetch --source {source}`)") \
                from None
        except ValueError as exc:  # a whole annotation file unreadable: no row can be read
            raise StageFailed(f"source {source}: {exc}") from None


def run(params: Params, paths: Paths) -> dict:
    return ingest_records(read_sources(params, paths), params, paths)
