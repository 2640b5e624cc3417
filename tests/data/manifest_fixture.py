"""Build a small clean manifest (artifacts/dedupe/manifest.parquet) with real image files, the way
dedupe leaves it, so validate and shard can be tested without running ingest and dedupe."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import taxonomy
from pipeline.paths import Paths


def make_image(path: Path, width: int, height: int, seed: int, fmt: str = "PNG") -> bytes:
    """A smooth gradient plus seeded noise, so images differ and JPEG encoding costs what it does
    on photos; returns the bytes written."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    pixels = ramp + rng.normal(0, 25, size=(height, width, 3)) + seed % 50
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def build_manifest(paths: Paths, task: str = "hateful_memes",
                   rows_per_split: dict[str, int] | None = None,
                   size: tuple[int, int] = (64, 48), write: bool = True) -> pd.DataFrame:
    """Rows cycle through the task's classes; images live under artifacts/ingest/images/."""
    rows_per_split = rows_per_split or {"train": 24, "val": 12, "test": 12}
    names = taxonomy.class_names(task)
    records = []
    seed = 0
    for split, count in rows_per_split.items():
        for i in range(count):
            seed += 1
            label = i % len(names)
            width, height = size[0] + seed % 5, size[1] + seed % 3
            staging = paths.root / "staging" / f"{seed}.png"
            data = make_image(staging, width, height, seed)
            sha = hashlib.sha256(data).hexdigest()
            stored = paths.image_store / sha[:2] / f"{sha}.png"
            stored.parent.mkdir(parents=True, exist_ok=True)
            staging.replace(stored)
            source_id = f"{split}.{i:04d}"  # a dot, as ids may hold (sample keys must cope)
            records.append({
                "id": f"synthetic:{source_id}", "source": "synthetic", "source_id": source_id,
                "task": task, "split": split,
                "image_path": stored.relative_to(paths.root).as_posix(),
                "image_sha256": sha, "width": width, "height": height, "phash": f"{seed:016x}",
                "text": f"caption number {seed} for {split}", "label": label,
                "label_name": names[label], "valid_pair": label == 0,
            })
    frame = pd.DataFrame.from_records(records)
    if write:
        write_manifest(paths, frame)
    return frame


def write_manifest(paths: Paths, frame: pd.DataFrame) -> None:
    paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(paths.manifest, index=False)
