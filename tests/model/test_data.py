"""The WebDataset loaders over real tar shards written by tests/model/shard_writer.py."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.model import data
from pipeline.params import TrainParams
from tests.model.shard_writer import write_shards


def preprocess(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def tokenize(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 12, dtype=torch.long)
    for row, text in enumerate(texts):
        codes = [ord(c) % 250 + 1 for c in text[:12]]
        out[row, :len(codes)] = torch.tensor(codes)
    return out


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    sizes = write_shards(root, counts={"train": {0: 30, 1: 10}, "val": {0: 13, 1: 8},
                                       "test": {0: 5, 1: 5}},
                         per_shard=6, corrupt={"val": 2, "train": 2})
    return root, sizes


def _eval_batches(root, sizes, **kw):
    return list(data.eval_loader(root, "val", sizes, 4, preprocess, tokenize, **kw))


def test_eval_yields_every_sample_once_in_a_stable_order(shards):
    root, sizes = shards
    first = _eval_batches(root, sizes)
    ids = [i for b in first for i in b.ids]
    assert len(ids) == len(set(ids)) == 21  # 23 written, 2 corrupt
    assert ids == [i for b in _eval_batches(root, sizes) for i in b.ids]
    batch = first[0]
    assert batch.images.shape == (4, 3, 8, 8) and batch.tokens.shape == (4, 12)
    assert batch.labels.dtype == torch.long and batch.valid.dtype == torch.bool
    # valid pairs are exactly the label-0 samples (binary task)
    labels = torch.cat([b.labels for b in first])
    assert torch.equal(torch.cat([b.valid for b in first]), labels == 0)


def test_corrupt_samples_are_skipped_and_counted_with_a_reason(shards):
    root, sizes = shards
    skipped = [reason for b in _eval_batches(root, sizes) for _, reason in b.skipped]
    assert len(skipped) == 2
    assert {r.split(":")[0] for r in skipped} == {"bad_jpg", "bad_cls"}


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_split_across_ranks_loses_and_duplicates_nothing(shards, workers):
    root, sizes = shards
    everything = [i for b in _eval_batches(root, sizes) for i in b.ids]
    per_rank = [[i for b in _eval_batches(root, sizes, rank=r, world_size=2, num_workers=workers)
                 for i in b.ids] for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)
    skipped = sum(len(b.skipped) for r in (0, 1)
                  for b in _eval_batches(root, sizes, rank=r, world_size=2, num_workers=workers))
    assert skipped == 2


def _train_ids(root, sizes, params, epoch, steps=6):
    loader = data.train_loader(root, sizes, params, preprocess, tokenize, epoch=epoch)
    batches = [b for _, b in zip(range(steps), loader)]
    return batches


def test_train_stream_is_reproducible_per_epoch_and_differs_between_epochs(shards):
    root, sizes = shards
    params = TrainParams(batch_size=8, shuffle_buffer=16, seed=3)
    first = [b.ids for b in _train_ids(root, sizes, params, epoch=1)]
    again = [b.ids for b in _train_ids(root, sizes, params, epoch=1)]
    other = [b.ids for b in _train_ids(root, sizes, params, epoch=2)]
    assert first == again
    assert first != other
    assert all(len(ids) == 8 for ids in first)  # train batches are always full


def test_train_stream_counts_corrupt_samples(shards):
    root, sizes = shards
    params = TrainParams(batch_size=8, shuffle_buffer=0)
    # the class-0 stream resamples its shards; over 40 batches the two bad samples come up
    batches = _train_ids(root, sizes, params, epoch=0, steps=40)
    reasons = Counter(r.split(":")[0] for b in batches for _, r in b.skipped)
    assert reasons["bad_jpg"] > 0 and reasons["bad_cls"] > 0
    assert set(reasons) <= {"bad_jpg", "bad_cls"}


def test_upsampling_shifts_the_class_mix(shards):
    root, sizes = shards

    def share_of_hateful(upsampling):
        params = TrainParams(batch_size=10, shuffle_buffer=0, upsampling=upsampling)
        labels = torch.cat([b.labels for b in _train_ids(root, sizes, params, 0, steps=30)])
        return labels.float().mean().item()

    plain = share_of_hateful({})
    boosted = share_of_hateful({"hateful": 6.0})
    # weights: 32×1 vs 10×1 → about 0.24 hateful; 32 vs 10×6 → about 0.65
    assert 0.12 < plain < 0.36
    assert 0.5 < boosted < 0.8


def test_class_weights_reject_unknown_class_names(shards):
    _, sizes = shards
    with pytest.raises(data.DataError, match="unknown classes"):
        data.class_weights(sizes, ("not_hateful", "hateful"), {"spam": 2.0})


def test_empty_shard_list_is_a_clear_error(tmp_path, shards):
    root, sizes = shards
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(data.DataError, match="empty shard list"):
        data.eval_loader(tmp_path / "empty", "val", sizes, 4, preprocess, tokenize)
    empty_sizes = {**sizes, "splits": {"train": {"samples": 0, "per_class": {}}}}
    with pytest.raises(data.DataError, match="empty shard list"):
        data.class_shards(tmp_path / "empty", empty_sizes)


def test_class_listed_in_sizes_without_shard_files_is_an_error(tmp_path, shards):
    _, sizes = shards
    with pytest.raises(data.DataError, match="holds no shard"):
        data.class_shards(tmp_path, sizes)


def test_steps_per_epoch_is_a_whole_number_of_optimizer_steps(shards):
    _, sizes = shards  # 42 train samples
    assert data.steps_per_epoch(TrainParams(batch_size=8), sizes) == 5
    assert data.steps_per_epoch(TrainParams(batch_size=8, grad_accum_steps=2), sizes) == 4
    assert data.steps_per_epoch(TrainParams(batch_size=8), sizes, world_size=2) == 2
    assert data.steps_per_epoch(TrainParams(batch_size=8, train_num_samples=200), sizes) == 25
    assert data.train_valid_pairs(sizes) == 32


def test_decode_rejects_out_of_range_labels():
    raw = {"__key__": "k", "jpg": b"", "cls": b"7", "txt": b"x"}
    with pytest.raises(data.CorruptSample) as info:
        data.decode_sample(raw, preprocess, "hateful_memes")
    assert info.value.reason == "bad_cls"
