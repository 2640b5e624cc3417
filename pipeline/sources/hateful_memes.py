"""Hateful Memes (Kiela et al. 2020), landed in MMF's layout: `img/` + one `<split>.jsonl` a split
(train, dev_seen, dev_unseen, test_seen, test_unseen), lines `{"id", "img", "text", "label"}`.

Three ways in, picked by `params.fetch.hateful_memes`:
- `local_dir`: an MMF folder already on disk, copied as is;
- `gdrive_archive_id`: the image archive from Google Drive (gdown), annotations from the Hugging
  Face copy, and any image the archive lacks fetched from the Hugging Face copy;
- otherwise the Hugging Face dataset `hf_dataset`. Its main branch (neuralcatcher/hateful_memes)
  is the MMF layout itself; Hub parquet exports (one folder or file prefix per split, columns id,
  img, label, text, img possibly embedded bytes) are converted to the same layout.
Network calls sit in `download_hf_snapshot` and `download_gdrive`; everything else works on files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from pipeline.params import HatefulMemesSourceParams, Params
from pipeline.sources.archives import safe_extract
from pipeline.sources.base import RawRecord, canonical_split, safe_file_stem
from pipeline.sources.download import (CopyReport, FetchError, copy_file, copy_tree, landing,
                                       local_folder, record_fetch, scratch_dir)
from pipeline.sources.jsonl_layout import read_layout, split_files

SOURCE = "hateful_memes"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ANNOTATION_PATTERNS = ("*.jsonl", "LICENSE*", "README*")
# Above this many, asking the Hub for each file by name is slower than taking the whole folder.
MAX_NAMED_IMAGE_PATTERNS = 500

log = logging.getLogger(__name__)


def read(root: Path, task: str) -> Iterator[RawRecord]:
    return read_layout(root, SOURCE, task)


def fetch(dest: Path, params: Params) -> None:
    options = params.fetch.hateful_memes
    report = CopyReport()
    with landing(dest) as staging:
        if options.local_dir:
            import_mmf_folder(local_folder(options.local_dir, "fetch.hateful_memes.local_dir"),
                              staging, report)
        elif options.gdrive_archive_id:
            _fetch_drive_archive(options, staging, params.fetch.max_extracted_bytes, report)
        else:
            with scratch_dir(dest) as scratch:
                snapshot = download_hf_snapshot(options.hf_dataset, scratch / "hf",
                                                (*ANNOTATION_PATTERNS, "*.parquet", "img/*"))
                import_hf_snapshot(snapshot, staging, report)
        missing = missing_images(staging)
        if missing:
            # Not fatal: ingest quarantines each of these rows as missing_image.
            log.warning("hateful_memes: %d referenced images are absent, e.g. %s",
                        len(missing), missing[0])
    record_fetch(dest, SOURCE, report)


# ---------------------------------------------------------------- network (kept small)

def download_hf_snapshot(repo_id: str, local_dir: Path, allow_patterns: Sequence[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_dir=local_dir,
                                      allow_patterns=list(allow_patterns)))
    except OSError as exc:  # the hub's HTTP, gated-repo and offline errors are all OSErrors
        raise FetchError(f"Hugging Face dataset {repo_id} could not be downloaded ({exc}); "
                         "a gated dataset needs HF_TOKEN or `hf auth login`") from exc


def download_gdrive(file_id: str, folder: Path) -> Path:
    import gdown
    from gdown.exceptions import DownloadError

    folder.mkdir(parents=True, exist_ok=True)
    try:
        output = gdown.download(id=file_id, output=f"{folder}/", quiet=True)
    except (DownloadError, OSError) as exc:
        raise FetchError(f"Google Drive file {file_id} could not be downloaded ({exc})") from exc
    if not output:
        raise FetchError(f"Google Drive file {file_id} could not be downloaded")
    return Path(output)


# ---------------------------------------------------------------- conversion and merging

def import_mmf_folder(source: Path, dest: Path, report: CopyReport | None = None) -> CopyReport:
    """Copy an MMF-layout folder (confined to it, see copy_tree); refuse one without any
    `<split>.jsonl`."""
    if not split_files(source):
        raise FetchError(f"{source}: no <split>.jsonl files (expected e.g. train.jsonl, "
                         "dev_seen.jsonl)")
    return copy_tree(source, dest, report)


def import_hf_snapshot(snapshot: Path, dest: Path, report: CopyReport | None = None) -> int:
    """Turn a downloaded Hub snapshot into the jsonl layout under `dest`; return lines written
    or copied. Split jsonl files are taken as they are; parquet exports are converted."""
    if split_files(snapshot):
        copy_tree(snapshot, dest, report)
        return sum(_count_lines(path) for path, _ in split_files(dest))
    parquet_by_split = _parquet_files_by_split(snapshot)
    if not parquet_by_split:
        raise FetchError(f"{snapshot}: neither <split>.jsonl nor per-split parquet files")
    if (snapshot / "img").is_dir():
        copy_tree(snapshot / "img", dest / "img", report)
    written = 0
    for split_name, files in parquet_by_split.items():
        with (dest / f"{split_name}.jsonl").open("w", encoding="utf-8") as out:
            for row in _parquet_rows(files):
                out.write(json.dumps(_jsonl_item(row, dest), ensure_ascii=False) + "\n")
                written += 1
    return written


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _parquet_files_by_split(snapshot: Path) -> dict[str, list[Path]]:
    """Hub exports name the split by folder (`default/train/0000.parquet`) or by file prefix
    (`data/train-00000-of-00001.parquet`); files whose split we cannot tell are an error, not
    something to skip quietly."""
    by_split: dict[str, list[Path]] = {}
    for path in sorted(snapshot.rglob("*.parquet")):
        candidates = (path.parent.name, path.stem.split("-")[0])
        split_name = next((name for name in candidates if canonical_split(name)), None)
        if split_name is None:
            raise FetchError(f"{path}: cannot tell which split this parquet file holds")
        by_split.setdefault(split_name, []).append(path)
    return by_split


def _parquet_rows(files: Iterable[Path]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
            yield from batch.to_pylist()


def _jsonl_item(row: dict, dest: Path) -> dict:
    """One parquet row as an MMF line; an embedded image (the `datasets` Image feature stores
    `{"bytes", "path"}`) is written under img/."""
    image = row.get("img", row.get("image"))
    if isinstance(image, dict):
        image = _write_embedded_image(image, row.get("id"), dest)
    return {"id": row.get("id"), "img": image, "text": row.get("text"), "label": row.get("label")}


def _write_embedded_image(image: dict, item_id: object, dest: Path) -> str | None:
    data = image.get("bytes")
    if not data:
        return image.get("path")
    name = PurePosixPath(str(image.get("path") or "")).name
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES or not safe_file_stem(name):
        # The export's own name is unusable; the id names the file only when it is a safe file
        # name, else the content's hash does (`../x`, NUL or a lone surrogate never reach disk).
        stem = str(item_id)
        if not safe_file_stem(stem):
            stem = hashlib.sha256(data).hexdigest()[:32]
        name = f"{stem}.png"
    target = dest / "img" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"img/{name}"


def referenced_images(root: Path) -> list[str]:
    """The `img` paths the split files name, in order, without repeats. Lines that do not parse
    are skipped here; the reader reports them."""
    seen: dict[str, None] = {}
    for path, _ in split_files(root):
        with path.open("rb") as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(item, dict) and _stays_inside(item.get("img")):
                    seen[item["img"]] = None
    return list(seen)


def _stays_inside(name: object) -> bool:
    """A relative path without `..`, NUL or a lone surrogate: the only names fetch may check or
    copy under the landing folder (ingest quarantines the rest as path_outside_dataset)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts


def missing_images(root: Path) -> list[str]:
    return [name for name in referenced_images(root) if not (root / name).is_file()]


def merge_archive_images(extracted: Path, image_dir: Path) -> int:
    """Move the image files of an extracted archive into `image_dir` by file name; return how
    many. The Drive archive nests them (`hateful_memes/img/…`); macOS zips add `__MACOSX/._x`
    resource forks, which are not images."""
    image_dir.mkdir(parents=True, exist_ok=True)
    moved = 0
    for path in sorted(extracted.rglob("*")):
        if (not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES
                or "__MACOSX" in path.parts or path.name.startswith("._")):
            continue
        target = image_dir / path.name
        if target.exists():
            log.warning("hateful_memes: archive holds %s twice; keeping the first", path.name)
            continue
        shutil.move(path, target)
        moved += 1
    return moved


def fill_missing_from_snapshot(snapshot: Path, root: Path,
                               report: CopyReport | None = None) -> int:
    """Copy images that `root`'s split files name but lack from a Hub snapshot, confined to the
    snapshot as copy_tree is; return count."""
    report = report if report is not None else CopyReport()
    home = os.path.realpath(snapshot)
    filled = 0
    for name in missing_images(root):
        if os.path.lexists(snapshot / name):  # absent from the snapshot too: ingest reports it
            filled += copy_file(snapshot / name, PurePosixPath(name), home, root / name, report)
    return filled


def _fetch_drive_archive(options: HatefulMemesSourceParams, staging: Path,
                         max_extracted_bytes: int | None, report: CopyReport) -> None:
    with scratch_dir(staging) as scratch:
        snapshot = download_hf_snapshot(options.hf_dataset, scratch / "hf", ANNOTATION_PATTERNS)
        import_hf_snapshot(snapshot, staging, report)
        archive = download_gdrive(str(options.gdrive_archive_id), scratch / "drive")
        safe_extract(archive, scratch / "extracted", max_extracted_bytes)
        archive.unlink()
        moved = merge_archive_images(scratch / "extracted", staging / "img")
        report.copied += moved
        missing = missing_images(staging)
        log.info("hateful_memes: %d images from the Drive archive, %d to fetch from %s",
                 moved, len(missing), options.hf_dataset)
        if missing:
            patterns = missing if len(missing) <= MAX_NAMED_IMAGE_PATTERNS else ["img/*"]
            download_hf_snapshot(options.hf_dataset, snapshot, patterns)
            fill_missing_from_snapshot(snapshot, staging, report)
