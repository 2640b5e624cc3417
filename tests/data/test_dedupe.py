"""dedupe over manifests that ingest built from hand-made folders."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import StageFailed
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import dedupe, ingest
from tests.data import fixtures as fx
from tests.data.fixtures import Item

TASK = "hateful_memes"


def run_both(tmp_path: Path, items: list[Item], **dedupe_params) -> dict:
    fx.write_layout(tmp_path / "data" / "synthetic" / TASK, items)
    params = parse_params({"task": TASK, "ingest": {"workers": 1}, "dedupe": dedupe_params})
    ingest.run(params, Paths(tmp_path))
    return dedupe.run(params, Paths(tmp_path))


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).set_index("id")


def outputs(tmp_path: Path):
    paths = Paths(tmp_path)
    return read(paths.manifest), read(paths.duplicates), read(paths.dedupe_quarantine)


def assert_conserved(stats: dict, tmp_path: Path) -> None:
    kept, dups, held = outputs(tmp_path)
    assert stats["rows_in"] == len(read(Paths(tmp_path).ingest_manifest))
    assert stats["rows_in"] == stats["kept"] + len(dups) + stats["quarantined"]
    assert (len(kept), len(held)) == (stats["kept"], stats["quarantined"])
    assert len(dups) == stats["duplicates_exact"] + stats["duplicates_near"]
    # every input id is in exactly one output
    every = list(kept.index) + list(dups.index) + list(held.index)
    assert sorted(every) == sorted(read(Paths(tmp_path).ingest_manifest).index)
    assert json.loads(Paths(tmp_path).stats("dedupe").read_text()) == stats


def test_exact_duplicates_across_splits_keep_the_test_copy(tmp_path):
    image = fx.png_bytes(1)
    stats = run_both(tmp_path, [
        Item("a_train", text="Same caption", image=image, split="train"),
        Item("b_test", text="  same   CAPTION ", image=image, split="test"),
        Item("c_val", text="same caption", image=image, split="dev"),
        Item("other", text="unrelated"),
    ])
    kept, dups, held = outputs(tmp_path)
    assert list(kept.index) == ["synthetic:b_test", "synthetic:other"]
    assert dups.loc["synthetic:a_train"].to_dict() == {
        "duplicate_of": "synthetic:b_test", "kind": "exact", "split": "train",
        "kept_split": "test"}
    assert dups.loc["synthetic:c_val", "kind"] == "exact"
    assert stats["duplicates_exact"] == 2 and stats["cross_split_dropped"] == 2
    assert stats["per_split"] == {"train": 1, "val": 0, "test": 1}
    assert held.empty
    assert_conserved(stats, tmp_path)


def test_near_duplicate_reencoded_image_with_same_caption(tmp_path):
    picture = fx.pattern_image(2, (128, 128))
    stats = run_both(tmp_path, [
        Item("png_val", text="a dog", image=fx.encode(picture, "PNG"), split="dev"),
        Item("jpg_train", text="A dog", image=fx.encode(picture.resize((100, 100)), "JPEG",
                                                        quality=60),
             image_name="jpg_train.jpg", split="train"),
    ])
    kept, dups, _ = outputs(tmp_path)
    assert list(kept.index) == ["synthetic:png_val"]
    assert dups.loc["synthetic:jpg_train", "kind"] == "near"
    assert stats["duplicates_near"] == 1 and stats["cross_split_dropped"] == 1
    assert_conserved(stats, tmp_path)


@pytest.mark.parametrize("threshold, kept", [(6, 1), (3, 2), (0, 2)])
def test_near_threshold_decides(tmp_path, threshold, kept):
    picture = fx.pattern_image(3, (128, 128))
    # a 2-degree rotation moves 4 of the 64 hash bits
    stats = run_both(tmp_path, [
        Item("a", text="cat", image=fx.encode(picture, "PNG")),
        Item("b", text="cat", image=fx.encode(picture.rotate(2), "JPEG", quality=50),
             image_name="b.jpg"),
    ], near_hamming_threshold=threshold)
    assert stats["kept"] == kept and stats["duplicates_near"] == 2 - kept
    assert_conserved(stats, tmp_path)


def test_same_image_other_caption_and_same_caption_other_image_are_kept(tmp_path):
    image = fx.png_bytes(4)
    stats = run_both(tmp_path, [
        Item("meme", text="look how many people love you", image=image, label=1),
        Item("confounder", text="look how many people love this", image=image, label=0),
        Item("other_image", text="look how many people love you", label=0),
    ])
    assert stats["kept"] == 3 and stats["quarantined"] == 0
    assert stats["duplicates_exact"] + stats["duplicates_near"] == 0
    assert_conserved(stats, tmp_path)


def test_conflicting_labels_among_duplicates_quarantine_the_whole_group(tmp_path):
    image = fx.png_bytes(5)
    picture = fx.pattern_image(5)
    stats = run_both(tmp_path, [
        Item("x1", text="hello", image=image, label=0),
        Item("x2", text="HELLO", image=image, label=1, split="test"),
        # joins the group only through its near match: the group is transitive
        Item("x3", text="hello", image=fx.encode(picture, "JPEG", quality=70),
             image_name="x3.jpg", label=0),
        Item("fine", text="fine"),
    ])
    kept, dups, held = outputs(tmp_path)
    assert list(kept.index) == ["synthetic:fine"]
    assert dups.empty
    assert set(held.index) == {"synthetic:x1", "synthetic:x2", "synthetic:x3"}
    assert set(held["reason"]) == {"conflicting_labels"} and set(held["stage"]) == {"dedupe"}
    assert "not_hateful" in held.loc["synthetic:x1", "detail"]
    assert stats["quarantined"] == 3
    assert_conserved(stats, tmp_path)


def test_ties_in_one_split_keep_the_smallest_id(tmp_path):
    image = fx.png_bytes(6)
    stats = run_both(tmp_path, [Item(name, text="same", image=image) for name in ("c", "a", "b")])
    kept, dups, _ = outputs(tmp_path)
    assert list(kept.index) == ["synthetic:a"]
    assert set(dups["duplicate_of"]) == {"synthetic:a"}
    assert stats["cross_split_dropped"] == 0
    assert_conserved(stats, tmp_path)


def test_split_priority_is_configurable(tmp_path):
    image = fx.png_bytes(7)
    run_both(tmp_path, [Item("t", text="s", image=image, split="train"),
                        Item("v", text="s", image=image, split="test")],
             split_priority=["train", "val", "test"])
    kept, _, _ = outputs(tmp_path)
    assert list(kept.index) == ["synthetic:t"]


def test_missing_manifest_says_to_run_ingest(tmp_path):
    with pytest.raises(StageFailed, match="mmguard ingest"):
        dedupe.run(parse_params({"task": TASK}), Paths(tmp_path))


def test_manifest_without_phash_is_refused(tmp_path):
    path = Paths(tmp_path).ingest_manifest
    path.parent.mkdir(parents=True)
    pd.DataFrame({"id": ["a"], "text": ["t"]}).to_parquet(path)
    with pytest.raises(StageFailed, match="phash"):
        dedupe.run(parse_params({"task": TASK}), Paths(tmp_path))


def test_synthetic_planted_defects_are_all_found(tmp_path):
    """Against the embedded source: each planted duplicate and broken item ends where expected."""
    from pipeline.sources import synthetic

    params = parse_params({"task": TASK, "synthetic": {"items_per_task": 60},
                           "ingest": {"workers": 2}})
    paths = Paths(tmp_path)
    synthetic.fetch(paths.source_dir("synthetic"), params)
    planted = json.loads((paths.source_dir("synthetic") / TASK / "planted.json").read_text())
    ingest_stats = ingest.run(params, paths)
    stats = dedupe.run(params, paths)
    _, dups, _ = outputs(tmp_path)
    held = read(paths.ingest_quarantine)
    for defect in planted["defects"]:
        record_id = f"synthetic:{defect['id']}"
        if defect["kind"] in ("exact_duplicate", "near_duplicate"):
            pair = {record_id, f"synthetic:{defect['source_item']}"}
            dropped = pair & set(dups.index)
            assert len(dropped) == 1, defect
            row = dups.loc[dropped.pop()]
            assert {row["duplicate_of"]} == pair - {row.name}
            assert row["kind"] == defect["kind"].split("_")[0]
        else:
            assert record_id in held.index, defect
    assert ingest_stats["quarantined"] == sum(
        d["kind"] not in ("exact_duplicate", "near_duplicate") for d in planted["defects"])
    assert_conserved(stats, tmp_path)
