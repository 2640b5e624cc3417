"""shard stage: write the clean manifest as WebDataset tar shards (docs/architecture.md, "Shards").

train is written per class (`train/class_<k>/`) so the loader can upsample classes; val and test
as one folder each. Inside a folder samples are sorted by id and tar headers carry a fixed mtime,
so the same manifest and params give byte-identical shards (DVC sees no change on a re-run).

Every manifest row becomes exactly one sample: a row that cannot be written (image gone since
validate, undecodable image, unknown split or label) stops the stage instead of being dropped.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from pipeline import atomic, taxonomy
from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.paths import SPLITS, Paths

SHARD_PATTERN = "shard-%06d.tar"
REQUIRED_COLUMNS = ("id", "source", "split", "image_path", "text", "label", "label_name",
                    "valid_pair")
# Below this many images a process pool costs more to start than it saves.
MIN_ROWS_FOR_POOL = 64
# Errors listed by id in a StageFailed message; the count is always given in full.
IDS_SHOWN = 10


def sample_key(item_id: str) -> str:
    """WebDataset key: ids may hold dots, which WebDataset would read as extensions."""
    return hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:20]


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled down to `short_side`; never scaled up."""
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def encode_jpeg(path: Path, short_side: int, quality: int) -> bytes:
    """The stored image as an RGB JPEG with its short side at most `short_side`."""
    with Image.open(path) as image:
        target = resized_size(*image.size, short_side)
        # For JPEG sources, let the decoder downscale by a power of two first (never below the
        # target): much less to decode, and the final resize below does the exact size.
        image.draft("RGB", target)
        rgb = image.convert("RGB")
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class _EncodeJob:
    item_id: str
    path: Path
    short_side: int
    quality: int


def _encode_job(job: _EncodeJob) -> tuple[str, bytes | None, str | None]:
    """Pool worker: never raises, so one bad image is reported by id instead of killing the pool."""
    try:
        return job.item_id, encode_jpeg(job.path, job.short_side, job.quality), None
    except Exception as exc:  # noqa: BLE001 - any decode failure is reported with its id
        return job.item_id, None, f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ShardGroup:
    """One output folder: its rows in write order and how many samples a shard holds."""
    folder: str           # relative to artifacts/shards, e.g. "train/class_1" or "val"
    rows: pd.DataFrame
    per_shard: int


def plan_groups(manifest: pd.DataFrame, params: Params) -> list[ShardGroup]:
    """Train per class, then val, then test; rows sorted by id inside each group."""
    groups = []
    ordered = manifest.sort_values("id", kind="stable")
    train = ordered[ordered["split"] == "train"]
    for label in range(taxonomy.num_classes(params.task)):
        groups.append(ShardGroup(f"train/class_{label}", train[train["label"] == label],
                                 params.shard.train_samples_per_shard))
    for split in SPLITS[1:]:
        groups.append(ShardGroup(split, ordered[ordered["split"] == split],
                                 params.shard.eval_samples_per_shard))
    return groups


def run(params: Params, paths: Paths) -> dict:
    manifest = _read_manifest(paths.manifest, params.task)
    _check_images_present(manifest, paths.root)

    groups = plan_groups(manifest, params)
    workers = params.shard.workers or _available_cores()
    started = time.perf_counter()
    written: dict[str, list[str]] = {}
    encoded = _encoded_images(groups, paths.root, params, workers)
    # The shards folder is built beside the old one and swapped in whole: a killed run leaves
    # the previous shards intact, and no stale shard survives a re-run.
    with atomic.directory(paths.shards) as staging:
        try:
            with tqdm(total=len(manifest), desc="shard", unit="img") as progress:
                for group in groups:
                    written[group.folder] = _write_group(group, encoded, staging, progress)
        finally:
            encoded.close()  # stops the pool now, also when a group failed
        seconds = time.perf_counter() - started

        sizes = _sizes(params.task, groups, written)
        total_written = sum(sizes["splits"][s]["samples"] for s in SPLITS)
        if total_written != len(manifest):  # conservation: every row is exactly one sample
            raise StageFailed(f"wrote {total_written} samples for {len(manifest)} manifest rows")
        (staging / paths.shard_sizes.name).write_text(json.dumps(sizes, indent=2))
    stats = {
        "rows": len(manifest),
        "samples": total_written,
        "shards": sum(len(v) for v in written.values()),
        "samples_per_split": {s: sizes["splits"][s]["samples"] for s in SPLITS},
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(manifest) / seconds, 1) if seconds > 0 else None,
    }
    atomic.write_text(paths.stats("shard"), json.dumps(stats, indent=2))
    return stats


def _read_manifest(path: Path, task: str) -> pd.DataFrame:
    if not path.exists():
        raise StageFailed(f"{path} not found (run dedupe and validate first)")
    manifest = pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise StageFailed(f"{path}: missing columns {missing}")
    problems = []
    if manifest["id"].isna().any() or manifest["id"].duplicated().any():
        problems.append("ids must be present and unique")
    bad_split = ~manifest["split"].isin(SPLITS)
    if bad_split.any():
        problems.append(f"{int(bad_split.sum())} rows with a split outside {SPLITS}: "
                        f"{_some_ids(manifest[bad_split])}")
    bad_label = ~manifest["label"].isin(range(taxonomy.num_classes(task)))
    if bad_label.any():
        problems.append(f"{int(bad_label.sum())} rows with a label outside task {task}: "
                        f"{_some_ids(manifest[bad_label])}")
    keys = manifest["id"].astype(str).map(sample_key)
    if not problems and keys.duplicated().any():
        colliding = manifest[keys.duplicated(keep=False)]
        problems.append(f"sample keys collide for ids {_some_ids(colliding)}")
    if problems:
        raise StageFailed(f"{path} cannot be sharded (did validate run?): " + "; ".join(problems))
    return manifest


def _check_images_present(manifest: pd.DataFrame, root: Path) -> None:
    """Checked before anything is written: an image removed after validate is a failure."""
    gone = manifest[[not (root / p).is_file() for p in manifest["image_path"]]]
    if len(gone):
        raise StageFailed(f"{len(gone)} image file(s) missing since validate: "
                          + ", ".join(f"{i} ({p})" for i, p in
                                      zip(gone["id"][:IDS_SHOWN], gone["image_path"][:IDS_SHOWN])))


def _encoded_images(groups: list[ShardGroup], root: Path, params: Params,
                    workers: int) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(id, jpeg, error) for every row of every group, in write order."""
    jobs = [_EncodeJob(str(row.id), root / row.image_path, params.shard.image_short_side,
                       params.shard.jpeg_quality)
            for group in groups for row in group.rows.itertuples(index=False)]
    if workers <= 1 or len(jobs) < MIN_ROWS_FOR_POOL:
        yield from map(_encode_job, jobs)
        return
    # fork: workers inherit the imported modules (webdataset pulls in torch, seconds to import
    # again); imap keeps the manifest order, so output does not depend on scheduling.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_encode_job, jobs, chunksize=16)


def _write_group(group: ShardGroup, encoded: Iterator, shards_root: Path,
                 progress: tqdm) -> list[str]:
    if group.rows.empty:
        return []
    folder = shards_root / group.folder
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    failures: list[str] = []
    # mtime fixed so tar headers do not depend on when the stage ran.
    with wds.ShardWriter(str(folder / SHARD_PATTERN), maxcount=group.per_shard, verbose=0,
                         mtime=0.0, encoder=False,
                         post=lambda name: names.append(name)) as writer:
        for row in group.rows.itertuples(index=False):
            item_id, jpeg, error = next(encoded)
            if item_id != str(row.id):  # the encoder stream and the rows must stay in step
                raise StageFailed(f"internal: encoded {item_id} where {row.id} was expected")
            if error is not None:
                failures.append(f"{item_id} ({row.image_path}): {error}")
                continue
            writer.write(_sample(row, jpeg))
            progress.update(1)
    if failures:
        raise StageFailed(f"{len(failures)} image(s) could not be encoded: "
                          + "; ".join(failures[:IDS_SHOWN]))
    return sorted(Path(n).relative_to(shards_root).as_posix() for n in names)


def _sample(row, jpeg: bytes) -> dict:
    meta = {"id": str(row.id), "source": str(row.source), "split": str(row.split),
            "label": int(row.label), "label_name": str(row.label_name),
            "valid_pair": bool(row.valid_pair)}
    return {
        "__key__": sample_key(str(row.id)),
        "jpg": jpeg,
        "txt": str(row.text).encode("utf-8"),
        "cls": str(int(row.label)).encode("ascii"),
        "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
    }


def _sizes(task: str, groups: list[ShardGroup], written: dict[str, list[str]]) -> dict:
    by_folder = {g.folder: g for g in groups}
    per_class = {}
    for label in range(taxonomy.num_classes(task)):
        folder = f"train/class_{label}"
        per_class[str(label)] = {"samples": len(by_folder[folder].rows), "shards": written[folder]}
    splits: dict[str, dict] = {"train": {
        "samples": sum(c["samples"] for c in per_class.values()),
        "shards": [s for c in per_class.values() for s in c["shards"]],
        "per_class": per_class,
    }}
    for split in SPLITS[1:]:
        splits[split] = {"samples": len(by_folder[split].rows), "shards": written[split]}
    return {"task": task, "class_names": list(taxonomy.class_names(task)), "splits": splits}


def _some_ids(frame: pd.DataFrame) -> list[str]:
    return [str(i) for i in frame["id"][:IDS_SHOWN]]


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
