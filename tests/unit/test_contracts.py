"""The contracts between stages: a file that breaks one fails naming the stage, file and column."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline import contracts
from pipeline.contracts import ShardIndex
from pipeline.errors import StageFailed


def manifest_row(**changes) -> dict:
    row = {"id": "s:1", "source": "s", "source_id": "1", "task": "hateful_memes",
           "split": "train", "image_path": "artifacts/ingest/images/ab/ab.png",
           "image_sha256": "ab" * 32, "width": 10, "height": 12, "phash": "0" * 16,
           "text": "t", "label": 0, "label_name": "not_hateful", "valid_pair": True}
    return row | changes


def test_a_conforming_manifest_passes():
    contracts.require(pd.DataFrame([manifest_row()]), contracts.MANIFEST, stage="shard",
                      path="m.parquet")


def test_missing_column_names_stage_file_and_column():
    frame = pd.DataFrame([manifest_row()]).drop(columns=["label_name"])
    with pytest.raises(StageFailed, match=r"^shard: m.parquet breaks the manifest contract: "
                                          r"missing column label_name$"):
        contracts.require(frame, contracts.MANIFEST, stage="shard", path="m.parquet")


def test_wrong_type_names_the_column_and_both_types():
    frame = pd.DataFrame([manifest_row(label="hateful")])
    with pytest.raises(StageFailed, match="dedupe: .* column label is string, expected int"):
        contracts.require(frame, contracts.MANIFEST, stage="dedupe", path="m.parquet")


def test_a_subset_is_checked_and_must_belong_to_the_contract():
    frame = pd.DataFrame({"id": ["a"], "split": ["test"]})
    contracts.require(frame, contracts.MANIFEST, stage="drift", path="m", columns=("id", "split"))
    with pytest.raises(ValueError, match="not columns of the manifest contract"):
        contracts.require(frame, contracts.MANIFEST, stage="drift", path="m", columns=("idx",))


def test_read_says_which_command_makes_a_missing_file(tmp_path):
    with pytest.raises(StageFailed, match="run `mmguard ingest` first"):
        contracts.read(tmp_path / "m.parquet", contracts.MANIFEST, stage="dedupe",
                       produced_by="ingest")


def test_predictions_schema_has_a_probability_per_class():
    schema = contracts.predictions(("not_hateful", "hateful"))
    assert schema.names == ["id", "split", "source", "label", "prob_not_hateful", "prob_hateful",
                            "prediction", "prediction_name"]


def test_shard_index_round_trips_the_sizes_json_layout(tmp_path):
    raw = {"task": "hateful_memes", "class_names": ["not_hateful", "hateful"], "splits": {
        "train": {"samples": 3, "shards": ["train/class_0/shard-000000.tar",
                                           "train/class_1/shard-000000.tar"],
                  "per_class": {"0": {"samples": 2, "shards": ["train/class_0/shard-000000.tar"]},
                                "1": {"samples": 1,
                                      "shards": ["train/class_1/shard-000000.tar"]}}},
        "val": {"samples": 1, "shards": ["val/shard-000000.tar"]},
        "test": {"samples": 0, "shards": []}}}
    (tmp_path / "sizes.json").write_text(json.dumps(raw))
    index = ShardIndex.read(tmp_path, "checks")
    assert index.samples("train") == 3 and index.samples("test") == 0
    assert index.train_classes[1].shards == ("train/class_1/shard-000000.tar",)
    assert index.train_classes[0].shards[0].startswith(ShardIndex.class_folder(0) + "/")
    assert index.to_dict() == raw
    (tmp_path / "copy").mkdir()
    index.write(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "sizes.json").read_text()) == raw


def test_shard_index_that_is_missing_or_broken_fails_clearly(tmp_path):
    with pytest.raises(StageFailed, match="checks: .*sizes.json not found: run `mmguard shard`"):
        ShardIndex.read(tmp_path, "checks")
    (tmp_path / "sizes.json").write_text('{"task": "hateful_memes", "splits": {}}')
    with pytest.raises(StageFailed, match="not a shard index .*class_names"):
        ShardIndex.read(tmp_path, "checks")
    index = ShardIndex("hateful_memes", ("a", "b"), {})
    with pytest.raises(StageFailed, match="shards are for task 'hateful_memes'"):
        index.check_task("moderation7", "train")
