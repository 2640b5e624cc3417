"""Fakeddit (Nakamura et al. 2020), the multimodal part: Reddit posts with an image.

    multimodal_train.tsv, multimodal_validate.tsv, multimodal_test_public.tsv
        tab-separated, written by pandas (so a first unnamed index column may come first and
        a field holding a quote or tab is quoted); the columns used are id, clean_title,
        6_way_label, hasImage
    public_image_set/<id>.jpg   (a .png is accepted too)
`raw_label` is the 6_way_label as an int; taxonomy.map_label checks its range.
"""
from __future__ import annotations

import csv
import io
import re
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.params import Params
from pipeline.sources.base import RawRecord, safe_file_stem, unsafe_id_problem
from pipeline.sources.download import (FetchError, copy_or_download, hoist_single_folder,
                                       landing, record_fetch)

SOURCE = "fakeddit"
SPLIT_FILES = {
    "multimodal_train.tsv": "train",
    "multimodal_validate.tsv": "val",
    "multimodal_test_public.tsv": "test",
}
REQUIRED_COLUMNS = ("id", "clean_title", "6_way_label")
IMAGE_DIR = "public_image_set"
# A quoted field still open after this many lines is an unbalanced quote, not a long title: the
# record's first line is reported and reading resumes on the line after it.
MAX_RECORD_LINES = 64
# `3`, or `3.0` when pandas saw a missing value in the column; ASCII digits only.
_LABEL = re.compile(r"-?[0-9]{1,18}(\.0*)?")
_QUOTE, _TAB = ord('"'), ord("\t")


def fetch(dest: Path, params: Params) -> None:
    options = params.fetch.fakeddit
    if not options.local_dir and not options.url:
        raise FetchError("fakeddit: set fetch.fakeddit.local_dir or fetch.fakeddit.url")
    with landing(dest) as staging:
        report = copy_or_download(options.local_dir, "fetch.fakeddit.local_dir",
                                  [str(options.url)], staging, params.fetch.max_extracted_bytes)
        hoist_single_folder(staging)
        if not any((staging / name).is_file() for name in SPLIT_FILES):
            raise FetchError(f"fakeddit: the fetched files hold none of {list(SPLIT_FILES)}")
    record_fetch(dest, SOURCE, report)


def read(root: Path, task: str) -> Iterator[RawRecord]:
    files = [(root / name, split) for name, split in SPLIT_FILES.items()
             if (root / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{root}: none of {list(SPLIT_FILES)} (fetch fakeddit first)")
    for path, split in files:
        yield from _read_tsv(root, path, split, task)


def _read_tsv(root: Path, path: Path, split: str, task: str) -> Iterator[RawRecord]:
    with path.open("rb") as handle:
        header = _parse_header(path, handle.readline())
        for line_number, raw_record, complete in records(enumerate(handle, start=2)):
            if not raw_record.strip():
                continue
            fallback_id = f"{path.name}:{line_number}"
            if not complete:
                yield RawRecord(SOURCE, fallback_id, split, None, None, None, task,
                                problem="malformed_tsv: a quoted field is never closed")
                continue
            yield _parse_row(raw_record, header, fallback_id, root, split, task)


def _still_quoted(line: bytes, quoted: bool) -> bool:
    """Whether a record is inside a quoted field at the end of `line`, given whether it was at
    the line's start. csv's rules: a quote opens a quoted field only at the start of a field,
    and inside one a doubled quote is a literal quote."""
    if not quoted and _QUOTE not in line:  # the common case, without a byte loop
        return False
    state = "quoted" if quoted else "field_start"
    for byte in line:
        if state == "quoted":
            state = "closing" if byte == _QUOTE else "quoted"
        elif byte == _TAB:
            state = "field_start"
        elif state == "field_start":
            state = "quoted" if byte == _QUOTE else "unquoted"
        elif state == "closing":
            state = "quoted" if byte == _QUOTE else "unquoted"
    return state == "quoted"


def records(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes, bool]]:
    """(first line number, raw bytes, complete) per TSV record. A record ends at a line end
    outside quotes, so a quoted title holding newlines stays one record. One that never closes
    (within MAX_RECORD_LINES or by the end of the file) yields its first line alone with
    complete=False, and the lines after it are read again as records of their own."""
    source = iter(lines)
    pushed_back: deque[tuple[int, bytes]] = deque()
    pending: list[tuple[int, bytes]] = []
    quoted = False
    while True:
        item = pushed_back.popleft() if pushed_back else next(source, None)
        if item is None and not pending:
            return
        if item is not None:
            pending.append(item)
            quoted = _still_quoted(item[1], quoted)
            if not quoted:
                yield pending[0][0], b"".join(line for _, line in pending), True
                pending = []
                continue
            if len(pending) <= MAX_RECORD_LINES:
                continue
        first, rest = pending[0], pending[1:]
        yield first[0], first[1], False
        pushed_back.extendleft(reversed(rest))
        pending, quoted = [], False


def _parse_header(path: Path, raw_line: bytes) -> list[str]:
    try:
        header = next(csv.reader([raw_line.decode("utf-8").rstrip("\r\n")], delimiter="\t"))
    except (UnicodeDecodeError, StopIteration):
        raise ValueError(f"{path}: the header line is empty or not UTF-8") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"{path}: header lacks columns {missing}")
    return header


def _parse_row(raw_line: bytes, header: list[str], fallback_id: str, root: Path, split: str,
               task: str) -> RawRecord:
    def broken(problem: str) -> RawRecord:
        return RawRecord(SOURCE, fallback_id, split, None, None, None, task, problem=problem)

    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return broken(f"invalid_utf8: record is not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        rows = list(csv.reader(io.StringIO(line, newline=""), delimiter="\t"))
    except csv.Error as exc:  # a NUL byte, a field over csv.field_size_limit(), ...
        return broken(f"malformed_tsv: {exc}")
    if len(rows) != 1:
        return broken("malformed_tsv: a line break or carriage return outside quotes")
    fields = rows[0]
    if len(fields) != len(header):
        return broken(f"wrong_column_count: expected {len(header)} columns, got {len(fields)}")
    row = dict(zip(header, fields))
    post_id = row["id"].strip()
    if not post_id:
        return broken("missing_id: row has no id")
    if not safe_file_stem(post_id):
        return broken(unsafe_id_problem(post_id))
    label = _parse_label(row["6_way_label"])
    if label is None:
        return RawRecord(SOURCE, post_id, split, None, row["clean_title"], row["6_way_label"],
                         task, problem=f"bad_label: 6_way_label {row['6_way_label']!r} is not "
                                       "an integer")
    has_image = row.get("hasImage", "True").strip().lower() not in ("false", "0")
    return RawRecord(SOURCE, post_id, split, image_path(root, post_id) if has_image else None,
                     row["clean_title"], label, task, image_root=root)


def _parse_label(value: str) -> int | None:
    value = value.strip()
    return int(value.split(".")[0]) if _LABEL.fullmatch(value) else None


def image_path(root: Path, post_id: str) -> Path:
    jpg = root / IMAGE_DIR / f"{post_id}.jpg"
    png = jpg.with_suffix(".png")
    return png if not jpg.exists() and png.exists() else jpg
