"""What every source adapter yields: raw records, before normalisation and label mapping.

A source module has `fetch(dest: Path, params: Params) -> None` (land raw files under
`data/<source>/` exactly as the source provides them) and `read(root: Path, task: str) ->
Iterator[RawRecord]`. A reader never drops anything: a line it cannot parse becomes a record
with `problem` set, which ingest quarantines.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Split names as sources spell them, mapped to ours.
SPLIT_ALIASES = {
    "train": "train",
    "dev": "val", "dev_seen": "val", "dev_unseen": "val", "val": "val", "validation": "val",
    "valid": "val",
    "test": "test", "test_seen": "test", "test_unseen": "test",
}


@dataclass(frozen=True)
class RawRecord:
    source: str              # the source module's name
    source_id: str           # stable id inside the source; ingest makes `id = f"{source}:{source_id}"`
    split: str | None        # train/val/test, or None to let ingest split by id hash
    image_path: Path | None  # None when the source gave no image
    text: str | bytes | None  # bytes when the source's text is not valid UTF-8
    raw_label: Any           # the label as the source gives it; pipeline/taxonomy.py maps it
    task: str                # the task whose taxonomy the label belongs to
    # Set by the reader when the record could not be parsed: "<reason_code>: <detail>".
    problem: str | None = None


def canonical_split(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.strip().lower())
