"""Loader throughput, side by side in one run: the WebDataset loader over shards vs a plain
map-style Dataset opening one image file per sample with PIL. Same model.preprocess and tokenizer,
same batch size and workers. Run with `make bench`; prints samples/s and ratios.

Two per-file baselines, because they answer different questions:
- `files-original`: the ingest image store as it is (full-size originals), i.e. training without
  the shard stage;
- `files-resized`: the very JPEG bytes the shards hold, one file each, i.e. the tar format alone.
Numbers are warm page cache on local disk, where tar's sequential-read advantage is smallest.
"""
from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.model import build_model
from pipeline.model import data
from pipeline.params import parse_params

N_IMAGES = int(os.environ.get("BENCH_LOADER_IMAGES", "600"))
BATCH = 64
WORKERS = int(os.environ.get("BENCH_LOADER_WORKERS", "2"))


def _photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # smooth gradients plus noise: compresses like a photo, not like a flat colour
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.1, 0.5)) % 255, (y * rng.uniform(0.1, 0.5)) % 255,
                     ((x + y) * rng.uniform(0.05, 0.3)) % 255], axis=-1)
    noisy = base + rng.normal(0, 18, base.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _resized(image: Image.Image, short_side: int = 256) -> Image.Image:
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)),
                        Image.Resampling.BICUBIC)


def build_corpus(root: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    (root / "original").mkdir(parents=True)
    (root / "resized").mkdir()
    for i in range(N_IMAGES):
        image = _photo_like(rng, int(rng.integers(500, 900)), int(rng.integers(400, 700)))
        original, small = _jpeg(image, 95), _jpeg(_resized(image), 90)
        (root / "original" / f"{i}.jpg").write_bytes(original)
        (root / "resized" / f"{i}.jpg").write_bytes(small)
        items.append({"id": f"bench:{i}", "text": f"bench caption number {i}",
                      "label": i % 2, "jpg": small})
    random.Random(0).shuffle(items)
    (root / "shards" / "val").mkdir(parents=True)
    per_shard = 200
    for start in range(0, len(items), per_shard):
        with wds.TarWriter(str(root / "shards" / "val" /
                               f"shard-{start // per_shard:06d}.tar")) as sink:
            for item in items[start:start + per_shard]:
                sink.write({"__key__": item["id"].replace(":", "_"), "jpg": item["jpg"],
                            "txt": item["text"].encode(), "cls": str(item["label"]).encode(),
                            "json": json.dumps({"id": item["id"],
                                                "valid_pair": item["label"] == 0}).encode()})
    return items


class PerFileDataset(Dataset):
    """The baseline: one PIL open per sample, preprocess in the worker, tokenize in collate."""

    def __init__(self, folder: Path, items: list[dict], preprocess):
        self.folder, self.items, self.preprocess = folder, items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        number = item["id"].split(":")[1]
        with Image.open(self.folder / f"{number}.jpg") as image:
            tensor = self.preprocess(image.convert("RGB"))
        return tensor, item["text"], item["label"]


def _per_file_loader(folder, items, model):
    def collate(samples):
        images, texts, labels = zip(*samples)
        return torch.stack(images), model.tokenize(list(texts)), torch.tensor(labels)
    return DataLoader(PerFileDataset(folder, items, model.preprocess), batch_size=BATCH,
                      num_workers=WORKERS, collate_fn=collate)


def _rate(loader) -> float:
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
    return seen / (time.perf_counter() - started)


def test_webdataset_loader_vs_per_file_dataset(tmp_path):
    items = build_corpus(tmp_path)
    model = build_model(parse_params({"model": {"name": "tiny"}}))
    sizes = {"task": "hateful_memes"}
    shards = tmp_path / "shards"

    def wds_loader():
        return data.eval_loader(shards, "val", sizes, BATCH, model.preprocess, model.tokenize,
                                num_workers=WORKERS)

    _rate(wds_loader())  # warm the page cache and the workers' imports for everyone alike
    rates = {}
    for _ in range(2):  # interleaved repeats, best of two: the machine is shared
        for name, make in (("webdataset", wds_loader),
                           ("files-original",
                            lambda: _per_file_loader(tmp_path / "original", items, model)),
                           ("files-resized",
                            lambda: _per_file_loader(tmp_path / "resized", items, model))):
            rates[name] = max(rates.get(name, 0.0), _rate(make()))
    print(f"\nloader samples/s ({N_IMAGES} images, batch {BATCH}, {WORKERS} workers, "
          f"preprocess → {model.preprocess}):")
    for name, rate in rates.items():
        print(f"  {name:15s} {rate:8.1f}")
    print(f"  ratio webdataset / files-original: {rates['webdataset'] / rates['files-original']:.2f}x"
          f"  (target ≥ 3x)")
    print(f"  ratio webdataset / files-resized:  {rates['webdataset'] / rates['files-resized']:.2f}x")
    assert all(rate > 0 for rate in rates.values())
