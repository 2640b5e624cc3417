"""MMHS150K (Gomez et al. 2020): 150k tweets with an image, each labelled by three annotators.

Layout as the authors ship it (a single wrapping folder is lifted by `fetch`):
    MMHS150K_GT.json        {tweet_id: {"img_url", "labels": [3 ints 0..5], "labels_str",
                                        "tweet_url", "tweet_text"}}
    img_resized/<id>.jpg    the tweet images
    img_txt/<id>.json       {"img_text": "..."}: OCR of text inside the image, for some tweets
    splits/{train,val,test}_ids.txt   one tweet id a line
`raw_label` is the list of three annotator labels; taxonomy.mmhs_majority decides the class.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pipeline.images import ImageRejected, read_confined
from pipeline.params import Params
from pipeline.sources.base import RawRecord, loads_json, safe_file_stem, unsafe_id_problem
from pipeline.sources.download import (FetchError, copy_or_download, hoist_single_folder,
                                       landing, record_fetch)

SOURCE = "mmhs150k"
GROUND_TRUTH = "MMHS150K_GT.json"
SPLIT_FILES = {"train_ids.txt": "train", "val_ids.txt": "val", "test_ids.txt": "test"}
# Every tweet text ends with its own t.co link to the image: unique per tweet, it carries no
# meaning and would stop exact-text duplicate detection from ever matching.
_TCO_LINK = re.compile(r"https?://t\.co/\S+")
MAX_OCR_BYTES = 1 << 20  # an OCR file holds a few words; anything bigger is not one


def fetch(dest: Path, params: Params) -> None:
    options = params.fetch.mmhs150k
    if not options.local_dir and not options.url:
        raise FetchError("mmhs150k: set fetch.mmhs150k.local_dir or fetch.mmhs150k.url")
    with landing(dest) as staging:
        report = copy_or_download(options.local_dir, "fetch.mmhs150k.local_dir",
                                  [str(options.url)], staging, params.fetch.max_extracted_bytes)
        hoist_single_folder(staging)
        if not (staging / GROUND_TRUTH).is_file():
            raise FetchError(f"mmhs150k: the fetched files hold no {GROUND_TRUTH}")
    record_fetch(dest, SOURCE, report)


def read(root: Path, task: str) -> Iterator[RawRecord]:
    entries = _load_ground_truth(root / GROUND_TRUTH)
    split_of, split_conflicts = _load_splits(root / "splits")
    ocr_dir = root / "img_txt"
    ocr_files = {path.stem for path in ocr_dir.glob("*.json")} if ocr_dir.is_dir() else set()
    annotated = set()
    for tweet_id, entry in entries:
        annotated.add(tweet_id)
        if not safe_file_stem(tweet_id):  # the id names its image and OCR files
            yield RawRecord(SOURCE, tweet_id, split_of.get(tweet_id), None, None, None, task,
                            problem=unsafe_id_problem(tweet_id))
            continue
        record = _record(root, tweet_id, entry, split_of.get(tweet_id), task,
                         ocr_dir / f"{tweet_id}.json" if tweet_id in ocr_files else None)
        if tweet_id in split_conflicts:
            record = replace(record, problem=f"conflicting_split: {split_conflicts[tweet_id]}")
        yield record
    # Ids a split file lists but the ground truth lacks are input rows too: report them.
    for tweet_id, split in split_of.items():
        if tweet_id not in annotated:
            yield RawRecord(SOURCE, tweet_id, split, None, None, None, task,
                            problem=f"missing_annotation: listed in the {split} split file "
                                    f"but absent from {GROUND_TRUTH}")


class _Pairs(list):
    """A JSON object kept as its (key, value) pairs, so a repeated tweet id is not overwritten
    silently the way `dict` would."""


def _load_ground_truth(path: Path) -> list[tuple[str, object]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (fetch mmhs150k first)")
    try:
        parsed = loads_json(path.read_bytes().decode("utf-8"), object_pairs_hook=_Pairs)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(parsed, _Pairs):
        raise ValueError(f"{path} must hold an object keyed by tweet id")
    return [(str(key), value) for key, value in parsed]


def _load_splits(splits_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """tweet id -> split, and tweet id -> description of the files that disagree about it."""
    split_of: dict[str, str] = {}
    listed_in: dict[str, list[str]] = {}
    for file_name, split in SPLIT_FILES.items():
        path = splits_dir / file_name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            tweet_id = line.strip()
            if tweet_id:
                split_of.setdefault(tweet_id, split)
                listed_in.setdefault(tweet_id, []).append(file_name)
    conflicts = {tweet_id: "listed in " + " and ".join(files)
                 for tweet_id, files in listed_in.items() if len(set(files)) > 1}
    return split_of, conflicts


def _record(root: Path, tweet_id: str, entry: object, split: str | None, task: str,
            ocr_path: Path | None) -> RawRecord:
    if not isinstance(entry, _Pairs):
        return RawRecord(SOURCE, tweet_id, split, None, None, None, task,
                         problem=f"malformed_entry: expected an object, got "
                                 f"{type(entry).__name__}")
    fields = dict(entry)
    record = RawRecord(SOURCE, tweet_id, split, root / "img_resized" / f"{tweet_id}.jpg",
                       _tweet_text(fields.get("tweet_text")), fields.get("labels"), task,
                       image_root=root)
    if ocr_path is None:
        return record
    ocr_text, problem = _read_ocr(ocr_path, root)
    if problem:
        return replace(record, problem=problem)
    if ocr_text and isinstance(record.text, str):
        # Much of MMHS150K's hate is written inside the image; the OCR gives the text tower
        # those words (the dataset paper feeds it to its models as an extra text input).
        return replace(record, text=f"{record.text}\n{ocr_text}".strip())
    return record


def _tweet_text(value: object) -> str | None:
    if value is None:
        return None
    return _TCO_LINK.sub("", str(value)).strip()


def _read_ocr(path: Path, root: Path) -> tuple[str | None, str | None]:
    """(OCR text, problem). Read like an image: confined to the dataset, size-checked, so a
    FIFO or a symlink to a huge file cannot hang or exhaust the reader."""
    try:
        item = loads_json(read_confined(path, root, MAX_OCR_BYTES, f"img_txt/{path.name}")
                          .decode("utf-8"))
    except ImageRejected as exc:
        return None, f"{exc.reason}: OCR file {exc.detail}"
    except UnicodeDecodeError as exc:
        return None, f"invalid_utf8: {path.name} ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return None, f"malformed_ocr_json: {path.name}: {exc.msg} at column {exc.colno}"
    except (ValueError, RecursionError) as exc:
        return None, f"malformed_ocr_json: {path.name}: {type(exc).__name__}"
    if not isinstance(item, dict):
        return None, f"malformed_ocr_json: {path.name} holds no object"
    text = item.get("img_text")
    return (str(text).strip() if text is not None else None), None

