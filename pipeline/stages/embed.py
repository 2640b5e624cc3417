"""embed stage: run frozen pretrained towers once over every item, for train, evaluate and drift.

With a packaged pretrained config and `model.finetune: frozen`, a trunk's features never change,
so they are computed here once per item and read from the cache afterwards
(pipeline/model/feature_cache.py): every shard sample (what train and evaluate read) and every
image of the clean manifest as the drift report decodes it. The previous run's cache is read
first (the output persists between runs), so only new or changed items run through the towers;
entries of items no longer present are not carried over.

Any other model config trains its towers, so there is nothing to cache: the stage then writes
only `cache.json` saying why, and the later stages run the towers as before.

Writes artifacts/embeddings/{cache.json, <tower>-<fingerprint>.npz, stats.json}.
"""
from __future__ import annotations

import time

import torch

from pipeline import atomic, drift_features
from pipeline.contracts import ShardIndex
from pipeline.errors import StageFailed
from pipeline.model import build_model, feature_cache
from pipeline.model.data import EvalStream
from pipeline.params import Params
from pipeline.paths import Paths

STAGE = "embed"
BATCH_SIZE = 64


def _shard_lists(paths: Paths, task: str) -> list[list[str]]:
    """Every shard the shard stage wrote, by folder (train per class, val, test)."""
    index = ShardIndex.read(paths.shards, STAGE)
    index.check_task(task, STAGE)
    lists = [entry.shards for _, entry in sorted(index.train_classes.items())]
    lists += [entry.shards for name, entry in sorted(index.splits.items()) if name != "train"]
    return [[str(paths.shards / shard) for shard in shards] for shards in lists if shards]


def _embed_shards(model, paths: Paths, task: str) -> int:
    seen = 0
    for shards in _shard_lists(paths, task):
        for batch in EvalStream(shards, model.preprocess, model.tokenize, task, BATCH_SIZE):
            if len(batch):
                model.features("image", batch.images)
                model.features("text", batch.tokens)
                seen += len(batch)
    return seen


def _embed_manifest(model, paths: Paths, drift_splits: set[str]) -> tuple[int, int]:
    """The clean manifest's images decoded the way the drift report decodes them."""
    import pandas as pd

    manifest = pd.read_parquet(paths.manifest, columns=["image_path", "text", "split"])
    # The drift stage compares these two splits; their images are decoded from the image store,
    # so their pixels differ from the shards' re-encoded JPEGs and need entries of their own.
    manifest = manifest[manifest["split"].isin(drift_splits)]
    seen = unreadable = 0
    for start in range(0, len(manifest), BATCH_SIZE):
        chunk = manifest.iloc[start:start + BATCH_SIZE]
        images, texts = [], []
        for item in chunk.itertuples(index=False):
            image = drift_features.load_image(paths.root / str(item.image_path))
            if image is None:
                unreadable += 1
                continue
            images.append(model.preprocess(image))
            texts.append("" if pd.isna(item.text) else str(item.text))
        if images:
            model.features("image", torch.stack(images))
            model.features("text", model.tokenize(texts))
            seen += len(images)
    return seen, unreadable


def run(params: Params, paths: Paths) -> dict:
    started = time.time()
    try:
        model = build_model(params).eval()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise StageFailed(f"cannot build model {params.model.name!r}: {exc}") from None
    out = paths.embeddings
    if not model.cacheable:
        reason = (f"model {params.model.name!r} with finetune {params.model.finetune!r} trains "
                  "its towers; only a packaged pretrained config with finetune: frozen is cached")
        with atomic.directory(out) as staging:
            feature_cache.write_manifest(staging, {"enabled": False, "reason": reason})
        stats = {"stage": STAGE, "enabled": False, "reason": reason}
        atomic.write_json(paths.stats(STAGE), stats)
        return stats

    # The previous run's entries (the output persists): only new items run through the towers.
    previous = model.attach_cache(out)
    # Channels-last weights let oneDNN run the image trunk's (mostly depthwise) convolutions
    # about 1.6x faster on a 2-core CPU; features differ by float rounding only, and the cache
    # keys (the input pixels) and the trunk's fingerprint do not change.
    model.trunk("image").to(memory_format=torch.channels_last)
    with torch.no_grad():
        shard_items = _embed_shards(model, paths, params.task)
        manifest_items, unreadable = _embed_manifest(
            model, paths, {params.drift.reference_split, params.drift.current_split})
    with atomic.directory(out) as staging:
        written = {}
        for tower, cache in model.caches.items():
            cache.subset(cache.touched).save(staging)
            written[tower] = len(cache.touched)
        record = {"enabled": True, "model": params.model.name, "pretrained":
                  params.model.pretrained, "fingerprints": model.tower_fingerprints(),
                  "weights": model.packaged.record(), "entries": written}
        feature_cache.write_manifest(staging, record)
    stats = {"stage": STAGE, "enabled": True, "shard_items": shard_items,
             "manifest_items": manifest_items, "manifest_unreadable": unreadable,
             "entries": written, "reused_from_previous_run": previous,
             "computed": dict(model.tower_rows), "seconds": round(time.time() - started, 1)}
    atomic.write_json(paths.stats(STAGE), stats)
    print(f"embed: {shard_items} shard items and {manifest_items} manifest images; trunk rows "
          f"computed {model.tower_rows}, cache entries {written}", flush=True)
    return stats
