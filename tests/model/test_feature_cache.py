"""The embedding cache of frozen pretrained towers: computed once by the embed stage, read by
train and evaluate, missed by changed inputs or weights, kept across head changes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.model import build_from_model_params, feature_cache
from pipeline.model.packaged import EFFICIENTNET_LITE0
from pipeline.params import ModelParams, parse_params
from pipeline.paths import Paths
from pipeline.stages import embed, evaluate, train
from tests.data.manifest_fixture import build_manifest
from tests.model.shard_writer import write_shards
from tests.stores import sqlite_store

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = {"name": "minilm-effnet-lite0", "pretrained": "packaged", "finetune": "frozen"}
COUNTS = {"train": {0: 6, 1: 6}, "val": {0: 3, 1: 3}, "test": {0: 3, 1: 3}}


def params_for(root: Path, **model):
    return parse_params({
        "model": {**PACKAGED, **model},
        "train": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "shuffle_buffer": 8,
                  "early_stopping_patience": 0, "seed": 3},
        "evaluate": {"batch_size": 8},
        "registry": {"tracking_uri": sqlite_store(root / "mlflow.db")}})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Real shards and a clean manifest with real images, embedded once by the stage."""
    root = tmp_path_factory.mktemp("embedded")
    paths = Paths(root)
    write_shards(paths.shards, counts=COUNTS, per_shard=8)
    build_manifest(paths, rows_per_split={"train": 8, "val": 2, "test": 4})
    first = embed.run(params_for(root), paths)
    return paths, first


def model(**head):
    params = ModelParams(**PACKAGED, **({"head": head} if head else {}))
    return build_from_model_params(params, "hateful_memes", seed=0).eval()


def test_the_stage_embeds_every_shard_sample_and_the_drift_splits_once(embedded):
    paths, stats = embedded
    assert stats["enabled"] and stats["shard_items"] == 24
    assert stats["manifest_items"] == 12  # train + test, the drift stage's two sides
    record = json.loads((paths.embeddings / feature_cache.MANIFEST).read_text())
    assert record["weights"]["image"]["sha256"] == EFFICIENTNET_LITE0.sha256
    files = sorted(p.name for p in paths.embeddings.glob("*.npz"))
    assert files == sorted(f"{t}-{record['fingerprints'][t][:16]}.npz" for t in ("image",
                                                                                  "text"))
    # Distinct inputs only: every shard JPEG and manifest PNG has its own pixels.
    assert stats["entries"]["image"] == stats["computed"]["image"] == 36


def test_a_second_run_reads_the_cache_and_runs_no_tower(embedded):
    paths, first = embedded
    again = embed.run(params_for(paths.root), paths)
    assert again["computed"] == {"image": 0, "text": 0}
    assert again["reused_from_previous_run"] == first["entries"]
    assert again["entries"] == first["entries"]


def test_train_and_evaluate_read_the_cache_instead_of_the_towers(embedded):
    paths, _ = embedded
    params = params_for(paths.root)
    trained = train.run(params, paths)
    assert trained["embedding_cache"]["cached"]
    assert trained["embedding_cache"]["trunk_rows_computed"] == {"image": 0, "text": 0}
    assert trained["embedding_cache"]["misses"] == {"image": 0, "text": 0}
    scored = evaluate.run(params, paths)
    assert scored["embedding_cache"]["trunk_rows_computed"] == {"image": 0, "text": 0}
    assert scored["embedding_cache"]["hits"]["image"] == 12  # val + test


def _first_val_batch(m, paths):
    from pipeline.model.data import EvalStream, split_shards

    stream = EvalStream(split_shards(paths.shards, "val"), m.preprocess, m.tokenize,
                        "hateful_memes", 4)
    return next(iter(stream))


def test_a_changed_image_misses_and_the_same_one_hits(embedded):
    paths, _ = embedded
    m = model()
    m.attach_cache(paths.embeddings)
    batch = _first_val_batch(m, paths)
    with torch.no_grad():
        cached = m.features("image", batch.images)
        assert m.tower_rows["image"] == 0
        changed = batch.images.clone()
        changed[0, :, 0, 0] += 0.5  # one pixel of one image
        recomputed = m.features("image", changed)
    assert m.tower_rows["image"] == 1
    assert torch.equal(cached[1:], recomputed[1:])
    # The cached features are the trunk's own output, not an approximation.
    assert torch.allclose(cached, m._run_trunk("image", batch.images), atol=1e-5)


def test_changed_weights_find_no_entries(embedded):
    paths, _ = embedded
    m = model()
    with torch.no_grad():
        m.clip.visual.trunk.conv_stem.weight.mul_(1.01)
    entries = m.attach_cache(paths.embeddings)
    assert entries["image"] == 0 and entries["text"] > 0


def test_a_changed_head_keeps_the_cache_and_dvc_does_not_re_embed(embedded):
    paths, _ = embedded
    wider = model(width=128, layers=1)
    assert wider.tower_fingerprints() == model().tower_fingerprints()
    assert wider.attach_cache(paths.embeddings)["image"] == 36
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["embed"]
    assert "model" not in stage["params"]
    assert not [p for p in stage["params"] if str(p).startswith(("model.head", "train"))]


def test_models_that_train_their_towers_are_not_cached(tmp_path):
    paths = Paths(tmp_path)
    write_shards(paths.shards, counts=COUNTS, per_shard=8)
    stats = embed.run(params_for(tmp_path, finetune="lora"), paths)
    assert not stats["enabled"] and "finetune 'lora'" in stats["reason"]
    assert not feature_cache.read_manifest(paths.embeddings)["enabled"]
    assert not list(paths.embeddings.glob("*.npz"))
    with pytest.raises(ValueError, match="no cacheable trunks"):
        build_from_model_params(ModelParams(**{**PACKAGED, "finetune": "lora"}),
                                "hateful_memes", 0).attach_cache(paths.embeddings)
