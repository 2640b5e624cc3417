"""shard stage: WebDataset shards read back with webdataset itself, and bad inputs."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from pipeline.errors import StageFailed
from pipeline.params import Params, parse_params
from pipeline.paths import Paths
from pipeline.stages import shard
from tests.data.manifest_fixture import build_manifest, make_image, write_manifest


def _params(**shard_params) -> Params:
    defaults = {"train_samples_per_shard": 5, "eval_samples_per_shard": 4,
                "image_short_side": 32, "workers": 1}
    return parse_params({"shard": {**defaults, **shard_params}})


@pytest.fixture()
def paths(tmp_path) -> Paths:
    return Paths(tmp_path)


@pytest.fixture()
def manifest(paths) -> pd.DataFrame:
    # 64x48 (+ a few px) images, above the 32 px short side, so every image is resized.
    return build_manifest(paths, rows_per_split={"train": 23, "val": 9, "test": 8})


def _read_back(paths: Paths, relative_shards: list[str]) -> list[dict]:
    urls = [str(paths.shards / name) for name in relative_shards]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))


def _all_shards(paths: Paths, sizes: dict) -> list[str]:
    return [name for split in ("train", "val", "test") for name in sizes["splits"][split]["shards"]]


def test_every_row_is_one_sample_with_its_text_label_and_metadata(paths, manifest):
    params = _params()
    summary = shard.run(params, paths)
    sizes = json.loads(paths.shard_sizes.read_text())
    samples = _read_back(paths, _all_shards(paths, sizes))

    assert summary["samples"] == len(manifest) == len(samples)
    by_id = {s["json"]["id"]: s for s in samples}
    assert sorted(by_id) == sorted(manifest["id"])  # each row exactly once
    for row in manifest.itertuples():
        sample = by_id[row.id]
        assert sample["__key__"] == hashlib.sha1(row.id.encode()).hexdigest()[:20]
        assert sample["txt"] == row.text
        assert sample["cls"] == row.label
        assert sample["json"] == {"id": row.id, "source": row.source, "split": row.split,
                                  "label": row.label, "label_name": row.label_name,
                                  "valid_pair": bool(row.valid_pair)}
        image = sample["jpg"]
        assert image.mode == "RGB"
        assert min(image.size) == 32  # resized down to the limit, aspect kept
        assert abs(image.size[0] / image.size[1] - row.width / row.height) < 0.05


def test_layout_per_class_for_train_and_per_shard_limits(paths, manifest):
    shard.run(_params(), paths)
    sizes = json.loads(paths.shard_sizes.read_text())
    assert sizes["task"] == "hateful_memes"
    assert sizes["class_names"] == ["not_hateful", "hateful"]
    train = sizes["splits"]["train"]
    for label, entry in train["per_class"].items():
        expected = int(((manifest["split"] == "train") & (manifest["label"] == int(label))).sum())
        assert entry["samples"] == expected
        assert all(name.startswith(f"train/class_{label}/shard-") for name in entry["shards"])
        assert len(entry["shards"]) == -(-expected // 5)  # ceil: full shards of 5, then the rest
        samples = _read_back(paths, entry["shards"])
        assert {s["cls"] for s in samples} == {int(label)}
    assert train["samples"] == 23
    for split, limit in (("train", 5), ("val", 4), ("test", 4)):
        for name in sizes["splits"][split]["shards"]:
            with tarfile.open(paths.shards / name) as tar:
                keys = {member.name.split(".")[0] for member in tar.getmembers()}
            assert 1 <= len(keys) <= limit
    assert sizes["splits"]["val"]["samples"] == 9 and len(sizes["splits"]["val"]["shards"]) == 3
    assert sizes["splits"]["test"]["shards"] == ["test/shard-000000.tar", "test/shard-000001.tar"]
    # every tar on disk is listed in sizes.json, and nothing else
    on_disk = sorted(p.relative_to(paths.shards).as_posix() for p in paths.shards.rglob("*.tar"))
    assert on_disk == sorted(_all_shards(paths, sizes))


def test_samples_are_sorted_by_id_and_output_is_reproducible(paths, manifest):
    shard.run(_params(), paths)
    sizes = json.loads(paths.shard_sizes.read_text())
    val_ids = [s["json"]["id"] for s in _read_back(paths, sizes["splits"]["val"]["shards"])]
    assert val_ids == sorted(val_ids)
    first = {name: (paths.shards / name).read_bytes() for name in _all_shards(paths, sizes)}
    shard.run(_params(), paths)
    second = {name: (paths.shards / name).read_bytes() for name in _all_shards(paths, sizes)}
    assert first == second  # byte-identical: fixed tar mtime, fixed order


def test_pool_and_single_process_give_the_same_shards(paths):
    build_manifest(paths, rows_per_split={"train": 60, "val": 12, "test": 12})
    shard.run(_params(workers=1), paths)
    sizes = json.loads(paths.shard_sizes.read_text())
    single = {name: (paths.shards / name).read_bytes() for name in _all_shards(paths, sizes)}
    summary = shard.run(_params(workers=2), paths)
    assert summary["workers"] == 2
    pooled = {name: (paths.shards / name).read_bytes() for name in _all_shards(paths, sizes)}
    assert pooled == single


def test_small_images_are_never_upscaled(paths):
    build_manifest(paths, size=(20, 18), rows_per_split={"train": 4, "val": 2, "test": 2})
    shard.run(_params(image_short_side=64), paths)
    sizes = json.loads(paths.shard_sizes.read_text())
    samples = _read_back(paths, _all_shards(paths, sizes))
    manifest = pd.read_parquet(paths.manifest).set_index("id")
    for sample in samples:
        row = manifest.loc[sample["json"]["id"]]
        assert sample["jpg"].size == (row["width"], row["height"])


def test_non_rgb_and_jpeg_sources_come_out_rgb(paths, manifest):
    # Stores are RGB by contract, but the stage must not depend on it: a palette PNG and a
    # large JPEG (decoded through Pillow's draft mode) both come out as RGB of the right size.
    palette_path = paths.root / manifest.loc[0, "image_path"]
    Image.open(palette_path).convert("P").save(palette_path)
    jpeg_path = paths.root / manifest.loc[1, "image_path"]
    make_image(jpeg_path, 400, 300, seed=99, fmt="JPEG")
    shard.run(_params(), paths)
    sizes = json.loads(paths.shard_sizes.read_text())
    by_id = {s["json"]["id"]: s for s in _read_back(paths, _all_shards(paths, sizes))}
    assert by_id[manifest.loc[0, "id"]]["jpg"].mode == "RGB"
    assert by_id[manifest.loc[1, "id"]]["jpg"].size == (43, 32)


def test_stale_shards_are_removed(paths, manifest):
    stale = paths.shards / "train" / "class_0" / "shard-000099.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    shard.run(_params(), paths)
    assert not stale.exists()


def test_image_missing_since_validate_is_a_stage_failure(paths, manifest):
    gone = manifest.loc[7]
    (paths.root / gone["image_path"]).unlink()
    with pytest.raises(StageFailed, match="missing since validate") as caught:
        shard.run(_params(), paths)
    assert gone["id"] in str(caught.value)
    assert not paths.shard_sizes.exists()  # nothing half-written


def test_undecodable_image_is_a_stage_failure_naming_the_id(paths, manifest):
    broken = manifest.loc[3]
    (paths.root / broken["image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(StageFailed, match="could not be encoded") as caught:
        shard.run(_params(), paths)
    assert broken["id"] in str(caught.value)


@pytest.mark.parametrize("column, value, message", [
    ("split", "holdout", "split outside"),
    ("label", 9, "label outside"),
])
def test_rows_that_would_be_lost_stop_the_stage(paths, manifest, column, value, message):
    manifest.loc[2, column] = value
    write_manifest(paths, manifest)
    with pytest.raises(StageFailed, match=message) as caught:
        shard.run(_params(), paths)
    assert manifest.loc[2, "id"] in str(caught.value)


def test_duplicate_ids_stop_the_stage(paths, manifest):
    manifest.loc[1, "id"] = manifest.loc[0, "id"]
    write_manifest(paths, manifest)
    with pytest.raises(StageFailed, match="unique"):
        shard.run(_params(), paths)


def test_missing_manifest_is_a_stage_failure(paths):
    with pytest.raises(StageFailed, match="not found"):
        shard.run(_params(), paths)


@pytest.mark.parametrize("size, expected", [
    ((640, 480), (341, 256)), ((480, 640), (256, 341)), ((256, 100), (256, 100)),
    ((100, 100), (100, 100)), ((3000, 257), (2988, 256)),
])
def test_resized_size(size, expected):
    assert shard.resized_size(*size, 256) == expected


def test_jpeg_quality_is_applied(tmp_path):
    source = tmp_path / "a.png"
    make_image(source, 200, 200, seed=1)
    low = shard.encode_jpeg(source, 256, quality=50)
    high = shard.encode_jpeg(source, 256, quality=100)
    assert len(low) < len(high)
    assert Image.open(io.BytesIO(low)).format == "JPEG"
