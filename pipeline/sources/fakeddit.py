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
from collections.abc import Iterator
from pathlib import Path

from pipeline.params import Params
from pipeline.sources.base import RawRecord
from pipeline.sources.download import (FetchError, copy_tree, download_and_extract,
                                       hoist_single_folder, landing, local_folder)

SOURCE = "fakeddit"
SPLIT_FILES = {
    "multimodal_train.tsv": "train",
    "multimodal_validate.tsv": "val",
    "multimodal_test_public.tsv": "test",
}
REQUIRED_COLUMNS = ("id", "clean_title", "6_way_label")
IMAGE_DIR = "public_image_set"


def fetch(dest: Path, params: Params) -> None:
    options = params.fetch.fakeddit
    if not options.local_dir and not options.url:
        raise FetchError("fakeddit: set fetch.fakeddit.local_dir or fetch.fakeddit.url")
    with landing(dest) as staging:
        if options.local_dir:
            copy_tree(local_folder(options.local_dir, "fetch.fakeddit.local_dir"), staging)
        else:
            download_and_extract([str(options.url)], staging, params.fetch.max_extracted_bytes)
        hoist_single_folder(staging)
        if not any((staging / name).is_file() for name in SPLIT_FILES):
            raise FetchError(f"fakeddit: the fetched files hold none of {list(SPLIT_FILES)}")


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
        # Line by line rather than one csv.reader over the file, so that a line that is not
        # UTF-8 or is cut short costs that line alone, with its line number as the id.
        for line_number, raw_line in enumerate(handle, start=2):
            if not raw_line.strip():
                continue
            yield _parse_row(raw_line, header, f"{path.name}:{line_number}", root, split, task)


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
        line = raw_line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return broken(f"invalid_utf8: line is not UTF-8 ({exc.reason} at byte {exc.start})")
    fields = next(csv.reader([line], delimiter="\t"))
    if len(fields) != len(header):
        return broken(f"wrong_column_count: expected {len(header)} columns, got {len(fields)}")
    row = dict(zip(header, fields))
    post_id = row["id"].strip()
    if not post_id:
        return broken("missing_id: row has no id")
    label = _parse_label(row["6_way_label"])
    if label is None:
        return RawRecord(SOURCE, post_id, split, None, row["clean_title"], row["6_way_label"],
                         task, problem=f"bad_label: 6_way_label {row['6_way_label']!r} is not "
                                       "an integer")
    has_image = row.get("hasImage", "True").strip().lower() not in ("false", "0")
    return RawRecord(SOURCE, post_id, split, image_path(root, post_id) if has_image else None,
                     row["clean_title"], label, task)


def _parse_label(value: str) -> int | None:
    """Labels are written as `3`, or `3.0` when pandas saw a missing value in the column."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def image_path(root: Path, post_id: str) -> Path:
    jpg = root / IMAGE_DIR / f"{post_id}.jpg"
    png = jpg.with_suffix(".png")
    return png if not jpg.exists() and png.exists() else jpg
