"""Reader for the jsonl layout: `img/` plus one `<split>.jsonl` per split (MMF's Hateful Memes
layout, also what the synthetic source writes).

Every line becomes exactly one RawRecord; a line that cannot be parsed becomes a record with
`problem` set, so ingest can quarantine it and count it.

Optional keys named in contracts.GROUPING_COLUMNS (`group`, `confounder`) become the record's
`groups`: a string of 1 to MAX_GROUP_CHARS characters after stripping; anything else
(a number, an empty or overlong string) is quarantined as `invalid_group`.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.contracts import GROUPING_COLUMNS
from pipeline.sources.base import RawRecord, canonical_split, loads_json

MAX_GROUP_CHARS = 64


def split_files(root: Path) -> list[tuple[Path, str]]:
    """The `<split>.jsonl` files under `root` with our split name, in a stable order."""
    found = []
    for path in sorted(root.glob("*.jsonl")):
        split = canonical_split(path.stem)
        if split is not None:
            found.append((path, split))
    return found


def _decode_text(value: object) -> str | bytes | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


def read_layout(root: Path, source: str, task: str) -> Iterator[RawRecord]:
    files = split_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: no <split>.jsonl files (expected e.g. train.jsonl)")
    for path, split in files:
        with path.open("rb") as handle:
            for line_number, raw_line in enumerate(handle, start=1):
                if not raw_line.strip():
                    continue
                fallback_id = f"{path.name}:{line_number}"
                yield _parse_line(raw_line, fallback_id, root, source, task, split)


def _parse_line(raw_line: bytes, fallback_id: str, root: Path, source: str, task: str,
                split: str) -> RawRecord:
    def broken(problem: str) -> RawRecord:
        return RawRecord(source, fallback_id, split, None, None, None, task, problem=problem)

    try:
        text_line = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return broken(f"invalid_utf8: line is not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        item = loads_json(text_line)
    except RecursionError:
        return broken("malformed_json: nested too deeply")
    except ValueError as exc:  # JSONDecodeError is one
        where = f" at column {exc.colno}" if hasattr(exc, "colno") else ""
        return broken(f"malformed_json: {getattr(exc, 'msg', exc)}{where}")
    if not isinstance(item, dict):
        return broken(f"malformed_json: expected an object, got {type(item).__name__}")
    if item.get("id") in (None, ""):
        return broken("missing_id: line has no id")
    groups = {}
    for column in GROUPING_COLUMNS:
        value = item.get(column)
        if value is None:
            continue
        if not isinstance(value, str) or not 0 < len(value.strip()) <= MAX_GROUP_CHARS:
            return broken(f"invalid_group: {column} must be a string of 1 to "
                          f"{MAX_GROUP_CHARS} characters, got {type(value).__name__} "
                          f"{str(value)[:40]!r}")
        groups[column] = value.strip()
    image = item.get("img")
    image_path = root / str(image) if image not in (None, "") else None
    return RawRecord(
        source=source,
        source_id=str(item["id"]),
        split=split,
        image_path=image_path,
        text=_decode_text(item.get("text")),
        raw_label=item.get("label"),
        task=task,
        image_root=root,
        groups=groups or None,
    )
