"""Writes small real WebDataset shards in the shard stage's layout, for loader/training tests.

Each item's label is visible in both modalities (a colour and a word), so a tiny model learns it
in a few steps; `corrupt` plants undecodable samples the loader must skip and count.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Callable

import webdataset as wds
from PIL import Image

from pipeline import taxonomy

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30), (200, 30, 200),
           (30, 200, 200), (120, 120, 120)]
WORDS = ["calm", "funny", "wrong", "fake", "odd", "edited", "hate"]


def key_of(item_id: str) -> str:
    return hashlib.sha1(item_id.encode()).hexdigest()[:20]


def jpeg_bytes(label: int, rng: random.Random, side: int = 40) -> bytes:
    r, g, b = COLOURS[label % len(COLOURS)]
    jitter = lambda c: max(0, min(255, c + rng.randint(-25, 25)))  # noqa: E731
    image = Image.new("RGB", (side + rng.randint(0, 8), side), (jitter(r), jitter(g), jitter(b)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# (label, rng) → the sample's JPEG bytes
ImageMaker = Callable[[int, random.Random], bytes]


def sample(task: str, split: str, index: int, label: int, rng: random.Random,
           image: ImageMaker = jpeg_bytes) -> dict:
    item_id = f"test:{split}.{index}"
    return {"__key__": key_of(item_id), "jpg": image(label, rng),
            "txt": f"a {WORDS[label % len(WORDS)]} post number {index}".encode(),
            "cls": str(label).encode(),
            "json": json.dumps({"id": item_id, "source": "test", "split": split, "label": label,
                                "label_name": taxonomy.class_names(task)[label],
                                "valid_pair": taxonomy.is_valid_pair(task, label)}).encode()}


def _write(folder: Path, samples: list[dict], per_shard: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for start in range(0, len(samples), per_shard):
        path = folder / f"shard-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for item in samples[start:start + per_shard]:
                sink.write(item)
        names.append(str(path))
    return names


def write_shards(root: Path, task: str = "hateful_memes",
                 counts: dict[str, dict[int, int]] | None = None, per_shard: int = 16,
                 corrupt: dict[str, int] | None = None, seed: int = 0,
                 image: ImageMaker = jpeg_bytes) -> dict:
    """Write train/class_<k>, val, test shards + sizes.json under `root`; returns sizes.

    `counts[split][label]` is the number of good samples; `corrupt[split]` extra bad samples
    (alternately a truncated jpg and a non-numeric cls), which sizes.json still counts, as the
    shard stage would count what it wrote. `image` makes each JPEG (default: a flat colour).
    """
    rng = random.Random(seed)
    n = taxonomy.num_classes(task)
    counts = counts or {"train": {k: 24 for k in range(n)}, "val": {k: 12 for k in range(n)},
                        "test": {k: 12 for k in range(n)}}
    corrupt = corrupt or {}
    root = Path(root)
    sizes: dict = {"task": task, "class_names": list(taxonomy.class_names(task)), "splits": {}}
    for split, per_label in counts.items():
        items = [(label, i) for label, c in per_label.items() for i in range(c)]
        rng.shuffle(items)
        samples = [sample(task, split, idx, label, rng, image)
                   for idx, (label, _) in enumerate(items)]
        for j in range(corrupt.get(split, 0)):
            bad = sample(task, split, 10_000 + j, 0, rng)
            if j % 2 == 0:
                bad["jpg"] = bad["jpg"][:40]  # truncated JPEG
            else:
                bad["cls"] = b"not-a-label"
            samples.insert(j * 3 % (len(samples) + 1), bad)
        if split == "train":
            per_class = {}
            for label in range(n):
                mine = [s for s in samples if s["cls"] == str(label).encode()
                        or (label == 0 and s["cls"] == b"not-a-label")]
                shards = _write(root / "train" / f"class_{label}", mine, per_shard) if mine else []
                per_class[str(label)] = {"samples": len(mine),
                                         "shards": [str(Path(p).relative_to(root))
                                                    for p in shards]}
            sizes["splits"]["train"] = {"samples": len(samples),
                                        "shards": [s for v in per_class.values()
                                                   for s in v["shards"]],
                                        "per_class": per_class}
        else:
            shards = _write(root / split, samples, per_shard)
            sizes["splits"][split] = {"samples": len(samples),
                                      "shards": [str(Path(p).relative_to(root)) for p in shards]}
    (root / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return sizes
