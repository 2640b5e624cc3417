"""What every source adapter yields: raw records, before normalisation and label mapping.

A source module has `fetch(dest: Path, params: Params) -> None` (land raw files under
`data/<source>/` exactly as the source provides them) and `read(root: Path, task: str) ->
Iterator[RawRecord]`. A reader never drops anything: a line it cannot parse becomes a record
with `problem` set, which ingest quarantines.
"""
from __future__ import annotations

import json
import re
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
    # The folder `image_path` must lie inside (the source's folder); None: the project's data/.
    image_root: Path | None = None
    # Optional grouping columns the source provides (contracts.GROUPING_COLUMNS), e.g.
    # {"group": "targets_group"}: kept in the manifest, reported and checked as slices.
    groups: dict[str, str] | None = None


def canonical_split(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.strip().lower())


# What an id may look like where it becomes a file name: no separators, no dot-only names, no
# control characters, nothing a filesystem could read as another place.
_SAFE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Integers past this many digits are kept as their text: Python refuses to parse more than 4,300
# digits (ValueError), and no id or label here is longer than a tweet id's 19.
MAX_INT_DIGITS = 30


def safe_file_stem(identifier: str) -> bool:
    """True when `identifier` can be used as a file name as it is."""
    return _SAFE_STEM.fullmatch(identifier) is not None


def unsafe_id_problem(identifier: str) -> str:
    return (f"invalid_id: id {identifier[:60]!r} cannot name a file (allowed: letters, digits, "
            "_ . -, at most 128, not starting with a dot)")


def _bounded_int(literal: str) -> int | str:
    return int(literal) if len(literal.lstrip("-")) <= MAX_INT_DIGITS else literal


def loads_json(text: str | bytes, **options: Any) -> Any:
    """json.loads for data from outside: an absurdly long integer stays a string (the label
    mapping then rejects it) instead of raising ValueError from deep inside the parser.
    Raises ValueError (JSONDecodeError included) or RecursionError for input that cannot be
    parsed."""
    return json.loads(text, parse_int=_bounded_int, **options)
