"""New data arriving in batches: `data/incoming/<batch>/` in the jsonl layout (img/ + one
`<split>.jsonl` per split) with labels of params.task.

Nothing is downloaded: batches are dropped in by whoever collects them, and the drift monitor
looks at each one before it joins training (pipeline/orchestration/incoming.py). A record's
source id is `<batch>/<id>`, so the same id in two batches stays two rows.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from pipeline.params import Params
from pipeline.sources.base import RawRecord
from pipeline.sources.jsonl_layout import read_layout

SOURCE = "incoming"


def batches(root: Path) -> list[Path]:
    """The batch folders under `root` (data/incoming), by name; hidden folders are still landing."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_batch(batch: Path, task: str) -> Iterator[RawRecord]:
    for record in read_layout(batch, SOURCE, task):
        yield dataclasses.replace(record, source_id=f"{batch.name}/{record.source_id}")


def read(root: Path, task: str) -> Iterator[RawRecord]:
    for batch in batches(root):
        yield from read_batch(batch, task)


def fetch(dest: Path, params: Params) -> None:
    """Batches arrive on their own; there is nothing to download."""
    count = len(batches(dest))
    print(f"incoming: {count} batch(es) under {dest}; nothing to fetch")
