"""dedupe: one copy of each item, none shared across splits, conflicting labels quarantined.

Two rows are the same item when their captions match (pipeline/text.match_key) AND either the
image bytes are identical (exact) or the perceptual hashes are within
dedupe.near_hamming_threshold bits (near). Only a caption AND its image make an item: the same
image with another caption (Hateful Memes' confounders) is a different item, and so is the same
caption on another image. Items connected by any chain of such matches form one group
(union-find). Within a group the labels must agree; then the copy in the first split of
dedupe.split_priority is kept (ties: smallest id), so a test item never leaks into train.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import atomic, phash, taxonomy
from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.paths import SPLITS, Paths
from pipeline.text import match_key

STAGE = "dedupe"
REQUIRED_COLUMNS = ("id", "source", "source_id", "task", "split", "image_sha256", "phash",
                    "text", "label", "label_name")
DUPLICATES_SCHEMA = pa.schema([("id", pa.string()), ("duplicate_of", pa.string()),
                               ("kind", pa.string()), ("split", pa.string()),
                               ("kept_split", pa.string())])
QUARANTINE_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("source_id", pa.string()),
    ("split", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()),
])


class UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression keeps later finds flat
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def groups(self) -> list[list[int]]:
        members: dict[int, list[int]] = defaultdict(list)
        for item in range(len(self.parent)):
            members[self.find(item)].append(item)
        return list(members.values())


def duplicate_groups(frame: pd.DataFrame, near_threshold: int) -> list[list[int]]:
    """Row positions of `frame` grouped by exact or near duplication (singletons included)."""
    groups = UnionFind(len(frame))
    text_keys = frame["text"].map(match_key).to_numpy()
    shas = frame["image_sha256"].to_numpy()
    for positions in pd.Series(range(len(frame))).groupby([shas, text_keys]).groups.values():
        positions = list(positions)
        for other in positions[1:]:
            groups.union(positions[0], other)
    hashes = np.array([phash.from_hex(h) for h in frame["phash"]], dtype=np.uint64)
    # Perceptual hashes are compared only within one caption, so the quadratic step stays small.
    for positions in pd.Series(range(len(frame))).groupby(text_keys).groups.values():
        positions = np.asarray(positions)
        if len(positions) < 2:
            continue
        for i, j in phash.pairwise_within(hashes[positions], near_threshold):
            groups.union(int(positions[i]), int(positions[j]))
    return groups.groups()


def _keeper(frame: pd.DataFrame, members: list[int], split_priority: tuple[str, ...]) -> int:
    rank = {split: index for index, split in enumerate(split_priority)}
    return min(members, key=lambda p: (rank.get(frame.at[p, "split"], len(rank)),
                                       frame.at[p, "id"]))


def resolve(frame: pd.DataFrame, near_threshold: int, split_priority: tuple[str, ...]):
    """(kept positions, duplicate rows, quarantine rows) for a manifest with a RangeIndex."""
    kept: list[int] = []
    duplicates: list[dict] = []
    quarantined: list[dict] = []
    for members in duplicate_groups(frame, near_threshold):
        if len(members) == 1:
            kept.extend(members)
            continue
        labels = sorted(set(frame.loc[members, "label_name"]))
        if len(labels) > 1:
            ids = sorted(frame.loc[members, "id"])
            for p in members:
                row = frame.loc[p]
                quarantined.append({
                    "id": row["id"], "source": row["source"], "source_id": row["source_id"],
                    "split": row["split"], "stage": STAGE, "reason": "conflicting_labels",
                    "detail": f"duplicate group of {len(members)} ({', '.join(ids[:5])}"
                              f"{', ...' if len(ids) > 5 else ''}) has labels {labels}"})
            continue
        keeper = _keeper(frame, members, split_priority)
        kept.append(keeper)
        for p in members:
            if p == keeper:
                continue
            same_bytes = frame.at[p, "image_sha256"] == frame.at[keeper, "image_sha256"]
            duplicates.append({"id": frame.at[p, "id"], "duplicate_of": frame.at[keeper, "id"],
                               "kind": "exact" if same_bytes else "near",
                               "split": frame.at[p, "split"],
                               "kept_split": frame.at[keeper, "split"]})
    return sorted(kept), duplicates, quarantined


def _load_manifest(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise StageFailed(f"{path} not found: run `mmguard ingest` first")
    frame = pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise StageFailed(f"{path} lacks columns {missing}; re-run `mmguard ingest`")
    return frame.reset_index(drop=True)


def _write(rows: list[dict], schema: pa.Schema, dest: Path) -> None:
    rows = sorted(rows, key=lambda row: row["id"])
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic.write_with(dest, lambda tmp: pq.write_table(table, tmp))


def run(params: Params, paths: Paths) -> dict:
    frame = _load_manifest(paths.ingest_manifest)
    if frame["id"].duplicated().any():
        raise StageFailed(f"{paths.ingest_manifest} repeats ids; ingest must make them unique")
    kept, duplicates, quarantined = resolve(frame, params.dedupe.near_hamming_threshold,
                                            params.dedupe.split_priority)
    clean = frame.loc[kept].sort_values("id").reset_index(drop=True)

    paths.dedupe_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_with(paths.manifest, lambda tmp: clean.to_parquet(tmp, index=False))
    _write(duplicates, DUPLICATES_SCHEMA, paths.duplicates)
    _write(quarantined, QUARANTINE_SCHEMA, paths.dedupe_quarantine)

    kinds = Counter(d["kind"] for d in duplicates)
    split_counts = Counter(clean["split"])
    task = str(frame["task"].iloc[0]) if len(frame) else params.task
    stats = {
        "rows_in": len(frame),
        "kept": len(clean),
        "duplicates_exact": kinds.get("exact", 0),
        "duplicates_near": kinds.get("near", 0),
        "quarantined": len(quarantined),
        "cross_split_dropped": sum(d["split"] != d["kept_split"] for d in duplicates),
        "per_split": {split: split_counts.get(split, 0) for split in SPLITS},
        "per_class": taxonomy.counts_by_name(task, clean["label"].tolist()),
    }
    accounted = stats["kept"] + len(duplicates) + stats["quarantined"]
    if stats["rows_in"] != accounted:  # not `assert`: -O removes it
        raise StageFailed(f"dedupe lost rows: {stats['rows_in']} in, {accounted} accounted for")
    atomic.write_json(paths.stats(STAGE), stats)
    if stats["kept"] == 0:
        raise StageFailed("dedupe kept no rows")
    return stats
