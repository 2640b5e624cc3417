"""MS-COCO captions: ordinary photos with a caption that describes them, the True/Neutral pairs
of moderation7.

    annotations/captions_<set>.json   {"images": [{"id", "file_name"}],
                                       "annotations": [{"id", "image_id", "caption"}]}
    <set>/<file_name>                 e.g. train2017/000000391895.jpg, val2017/…
One record per image with its first caption by annotation id: COCO has five captions an image,
and five records of one image would be near-duplicates. Splits are left to ingest (hash of id).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pipeline.params import Params
from pipeline.sources.base import RawRecord, loads_json
from pipeline.sources.download import FetchError, copy_or_download, landing, record_fetch

SOURCE = "coco"
RAW_LABEL = "True/Neutral"
CAPTION_GLOB = "captions_*.json"


def fetch(dest: Path, params: Params) -> None:
    options = params.fetch.coco
    if not options.local_dir and not options.urls:
        raise FetchError("coco: set fetch.coco.local_dir or fetch.coco.urls")
    with landing(dest) as staging:
        # No folder lifting here: the official zips unpack to annotations/ and val2017/.
        report = copy_or_download(options.local_dir, "fetch.coco.local_dir", options.urls,
                                  staging, params.fetch.max_extracted_bytes)
        if not caption_files(staging):
            raise FetchError(f"coco: the fetched files hold no annotations/{CAPTION_GLOB}")
    record_fetch(dest, SOURCE, report)


def caption_files(root: Path) -> list[Path]:
    return sorted((root / "annotations").glob(CAPTION_GLOB))


def read(root: Path, task: str) -> Iterator[RawRecord]:
    files = caption_files(root)
    if not files:
        raise FileNotFoundError(f"{root}/annotations: no {CAPTION_GLOB} (fetch coco first)")
    for path in files:
        yield from _read_caption_file(root, path, task)


def _load(path: Path) -> dict:
    try:
        content = loads_json(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(content, dict) or not isinstance(content.get("images"), list) \
            or not isinstance(content.get("annotations"), list):
        raise ValueError(f"{path} must hold an object with `images` and `annotations` lists")
    return content


def _read_caption_file(root: Path, path: Path, task: str) -> Iterator[RawRecord]:
    image_folder = root / path.stem.removeprefix("captions_")  # captions_val2017 -> val2017
    content = _load(path)
    first_caption = _first_captions(content["annotations"])
    seen_images: set[str] = set()
    for position, image in enumerate(content["images"]):
        source_id = _id_of(image)
        if source_id is None or not isinstance(image.get("file_name"), str):
            yield RawRecord(SOURCE, f"{path.name}:images[{position}]", None, None, None,
                            RAW_LABEL, task,
                            problem="malformed_entry: image entry lacks id or file_name")
            continue
        seen_images.add(source_id)
        caption = first_caption.get(source_id)
        yield RawRecord(SOURCE, source_id, None, image_folder / image["file_name"],
                        caption, RAW_LABEL, task,
                        problem=None if caption is not None
                        else "missing_caption: no caption annotation names this image",
                        image_root=root)
    # Captions of images the file does not list cannot become a pair; say so, once per image.
    for image_id in sorted(first_caption.keys() - seen_images):
        yield RawRecord(SOURCE, image_id, None, None, first_caption[image_id], RAW_LABEL, task,
                        problem=f"orphan_caption: image {image_id} is not among {path.name}'s "
                                "images")


def _id_of(entry: object) -> str | None:
    if not isinstance(entry, dict) or isinstance(entry.get("id"), bool):
        return None
    value = entry.get("id")
    return str(value) if isinstance(value, (int, str)) and str(value) else None


def _first_captions(annotations: list) -> dict[str, str]:
    """image id -> the caption with the lowest annotation id. Malformed annotations are
    skipped: an image left without any caption is reported as missing_caption."""
    best: dict[str, tuple[int, str]] = {}
    for annotation in annotations:
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            continue
        image_id = annotation.get("image_id")
        order = annotation.get("id")
        if not isinstance(image_id, (int, str)) or not isinstance(order, int):
            continue
        key = str(image_id)
        if key not in best or order < best[key][0]:
            best[key] = (order, annotation["caption"])
    return {key: caption for key, (_, caption) in best.items()}
