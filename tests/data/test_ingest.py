"""ingest over hand-built jsonl-layout folders: good rows, every kind of bad input, the counts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import StageFailed
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.sources.base import RawRecord
from pipeline.stages import ingest
from tests.data import fixtures as fx
from tests.data.fixtures import Item

TASK = "hateful_memes"


def make_params(**ingest_overrides):
    return parse_params({"task": TASK, "ingest": {"workers": 1, **ingest_overrides}})


def run_ingest(tmp_path: Path, items: list[Item], **ingest_overrides) -> dict:
    fx.write_layout(tmp_path / "data" / "synthetic" / TASK, items)
    return ingest.run(make_params(**ingest_overrides), Paths(tmp_path))


def manifest(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(Paths(tmp_path).ingest_manifest).set_index("id")


def quarantine(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(Paths(tmp_path).ingest_quarantine).set_index("id")


def reasons(tmp_path: Path) -> dict[str, str]:
    return quarantine(tmp_path)["reason"].to_dict()


def assert_conserved(stats: dict, tmp_path: Path) -> None:
    assert stats["rows_in"] == stats["kept"] + stats["quarantined"]
    assert len(manifest(tmp_path)) == stats["kept"]
    assert len(quarantine(tmp_path)) == stats["quarantined"]
    written = json.loads(Paths(tmp_path).stats("ingest").read_text())
    assert written == stats


def stored_image(tmp_path: Path, row) -> Image.Image:
    return Image.open(tmp_path / row["image_path"])


def test_good_rows_become_manifest_rows(tmp_path):
    png, jpg = fx.png_bytes(1), fx.jpeg_bytes(2, size=(80, 48))
    stats = run_ingest(tmp_path, [
        Item("1", text="  Hello\n world ", label=0, image=png, split="train"),
        Item("2", text="second", label="hateful", image=jpg, image_name="2.jpg",
             split="dev_seen"),
        Item("3", text="third", label=1, split="test_unseen"),
    ])
    rows = manifest(tmp_path)
    assert list(rows.index) == ["synthetic:1", "synthetic:2", "synthetic:3"]
    first, second = rows.loc["synthetic:1"], rows.loc["synthetic:2"]
    assert first["text"] == "Hello world"
    assert (first["label"], first["label_name"], first["valid_pair"]) == (0, "not_hateful", True)
    assert (second["label"], second["label_name"], second["valid_pair"]) == (1, "hateful", False)
    assert list(rows["split"]) == ["train", "val", "test"]
    # content-addressed by the original bytes; an RGB PNG/JPEG is stored untouched
    sha = hashlib.sha256(png).hexdigest()
    assert first["image_sha256"] == sha
    assert first["image_path"] == f"artifacts/ingest/images/{sha[:2]}/{sha}.png"
    assert (tmp_path / first["image_path"]).read_bytes() == png
    assert (tmp_path / second["image_path"]).read_bytes() == jpg
    assert second["image_path"].endswith(".jpg")
    assert (second["width"], second["height"]) == (80, 48)
    assert len(first["phash"]) == 16
    assert stats["per_split"] == {"train": 1, "val": 1, "test": 1}
    assert stats["per_class"] == {"not_hateful": 1, "hateful": 2}
    assert stats["per_source"] == {"synthetic": {"rows_in": 3, "kept": 3, "quarantined": 0}}
    assert_conserved(stats, tmp_path)


BAD_IMAGES = {
    "corrupt": (b"\x89PNG\r\n\x1a\n this is not a png at all" * 3, "corrupt_image"),
    "garbage": (bytes(range(256)) * 4, "corrupt_image"),
    "truncated_jpeg": (fx.truncated(fx.jpeg_bytes(5, size=(128, 128))), "corrupt_image"),
    "truncated_png": (fx.truncated(fx.png_bytes(6, size=(128, 128))), "corrupt_image"),
    "zero_bytes": (b"", "empty_image"),
    "bomb_header": (fx.huge_header_png(), "decompression_bomb"),
    "tiny": (fx.png_bytes(7, size=(8, 40)), "image_too_small"),
}


def test_bad_images_are_quarantined_with_their_reason(tmp_path):
    items = [Item("good", text="fine")]
    items += [Item(name, text=f"caption {name}", image=data) for name, (data, _) in
              BAD_IMAGES.items()]
    items.append(Item("missing", text="no file", image=None))
    items.append(Item("no_img_field", raw_line=b'{"id": "no_img_field", "text": "t", "label": 0}'))
    stats = run_ingest(tmp_path, items)
    expected = {f"synthetic:{name}": reason for name, (_, reason) in BAD_IMAGES.items()}
    expected["synthetic:missing"] = "missing_image"
    expected["synthetic:no_img_field"] = "missing_image"
    assert reasons(tmp_path) == expected
    assert list(manifest(tmp_path).index) == ["synthetic:good"]
    assert stats["quarantined_by_reason"]["corrupt_image"] == 4
    assert all(quarantine(tmp_path)["stage"] == "ingest")
    assert all(quarantine(tmp_path)["detail"].str.len() > 0)
    assert_conserved(stats, tmp_path)


def test_pixel_limit_applies_to_real_images_too(tmp_path):
    stats = run_ingest(tmp_path, [Item("small", image=fx.png_bytes(1, (40, 40))),
                                  Item("large", image=fx.png_bytes(2, (64, 64)))],
                       max_image_pixels=2048)
    assert reasons(tmp_path) == {"synthetic:large": "decompression_bomb"}
    assert "2048" in quarantine(tmp_path).loc["synthetic:large", "detail"]
    assert_conserved(stats, tmp_path)


def test_bomb_header_is_rejected_without_decoding():
    from pipeline import images
    with pytest.raises(images.ImageRejected) as caught:
        images.decode(fx.huge_header_png(50_000, 50_000), images.ImageLimits(40_000_000, 16, 2**20))
    assert caught.value.reason == "decompression_bomb"
    # Pillow's global limit is restored after the check
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


def test_png_named_file_that_is_really_a_jpeg_is_kept_as_jpg(tmp_path):
    data = fx.jpeg_bytes(3)
    stats = run_ingest(tmp_path, [Item("liar", image=data, image_name="liar.png")])
    row = manifest(tmp_path).loc["synthetic:liar"]
    assert row["image_path"].endswith(".jpg")
    assert (tmp_path / row["image_path"]).read_bytes() == data
    assert stats["extension_mismatch"] == 1
    assert_conserved(stats, tmp_path)


def test_colour_modes_are_stored_as_rgb(tmp_path):
    items = [
        Item("cmyk", image=fx.cmyk_jpeg_bytes(1), image_name="cmyk.jpg"),
        Item("palette", image=fx.palette_png_bytes(2)),
        Item("palette_transparent", image=fx.palette_png_bytes(3, transparent_index=0)),
        Item("rgba_clear", image=fx.rgba_png_bytes(4, alpha=0)),
        Item("gray16", image=fx.gray16_png_bytes()),
        Item("gray8", image=fx.encode(fx.pattern_image(5).convert("L"), "PNG")),
        Item("webp", image=fx.encode(fx.pattern_image(6), "WEBP"), image_name="webp.webp"),
    ]
    stats = run_ingest(tmp_path, items)
    rows = manifest(tmp_path)
    assert len(rows) == len(items)
    for record_id, row in rows.iterrows():
        image = stored_image(tmp_path, row)
        assert image.mode == "RGB" and image.format == "PNG", record_id
        assert row["image_path"].endswith(".png")
        assert image.size == (row["width"], row["height"])
    # fully transparent RGBA composites onto white
    clear = np.asarray(stored_image(tmp_path, rows.loc["synthetic:rgba_clear"]))
    assert (clear == 255).all()
    # transparent palette entries turn white; the others keep their colour
    palette = np.asarray(stored_image(tmp_path, rows.loc["synthetic:palette_transparent"]))
    source = Image.open(Path(tmp_path, "data/synthetic", TASK, "img/palette_transparent.png"))
    transparent = np.asarray(source) == 0
    assert transparent.any() and (palette[transparent] == 255).all()
    assert (palette[~transparent] != 255).any()
    # 16-bit is scaled to 8 bits: the full ramp survives instead of clipping to white
    ramp = np.asarray(stored_image(tmp_path, rows.loc["synthetic:gray16"]))[0, :, 0]
    assert ramp[0] == 0 and ramp[-1] == 255 and 100 < ramp[len(ramp) // 2] < 155
    # the sha is still that of the original file
    cmyk = rows.loc["synthetic:cmyk"]
    assert cmyk["image_sha256"] == hashlib.sha256(fx.cmyk_jpeg_bytes(1)).hexdigest()
    assert stats["kept"] == len(items) and stats["extension_mismatch"] == 0


def test_text_problems(tmp_path):
    long_text = "word " * 400
    stats = run_ingest(tmp_path, [
        Item("empty", text=""),
        Item("blank", text=" \t\n "),
        Item("none", text=None),
        Item("latin1", text=b"caf\xe9"),  # raw non-UTF-8 bytes inside the JSON line
        Item("long", text=long_text),
        Item("ok", text="ok"),
    ], max_text_chars=100)
    assert reasons(tmp_path) == {
        "synthetic:empty": "empty_text", "synthetic:blank": "empty_text",
        "synthetic:none": "empty_text", "synthetic:train.jsonl:4": "invalid_utf8"}
    long_row = manifest(tmp_path).loc["synthetic:long"]
    assert len(long_row["text"]) <= 100 and long_row["text"].endswith("word")
    assert stats["text_truncated"] == 1
    assert_conserved(stats, tmp_path)


def test_text_bytes_from_a_source_are_decoded_or_rejected(tmp_path):
    image_path = tmp_path / "one.png"
    image_path.write_bytes(fx.png_bytes(1))

    def record(source_id, text):
        return RawRecord("synthetic", source_id, "train", image_path, text, 0, TASK,
                         image_root=tmp_path)

    records = [record("utf8", "naïve".encode()), record("cp1252", "naïve".encode("cp1252"))]
    stats = ingest.ingest_records(records, make_params(), Paths(tmp_path), workers=1)
    assert manifest(tmp_path).loc["synthetic:utf8", "text"] == "naïve"
    assert reasons(tmp_path) == {"synthetic:cp1252": "invalid_utf8"}
    assert_conserved(stats, tmp_path)


def test_malformed_lines_and_unknown_labels(tmp_path):
    stats = run_ingest(tmp_path, [
        Item("ok"),
        Item("x1", raw_line=b'{"id": "broken", "text": '),
        Item("x2", raw_line=b'["a", "list"]'),
        Item("x3", raw_line=b'{"text": "no id", "label": 0}'),
        Item("banana", label="banana"),
        Item("seven", label=7),
        Item("nolabel", label=None),
        Item("boolean", label=True),
    ])
    assert reasons(tmp_path) == {
        "synthetic:train.jsonl:2": "malformed_json", "synthetic:train.jsonl:3": "malformed_json",
        "synthetic:train.jsonl:4": "missing_id",
        "synthetic:banana": "unknown_label", "synthetic:seven": "unknown_label",
        "synthetic:nolabel": "unknown_label", "synthetic:boolean": "unknown_label"}
    assert stats["quarantined_by_reason"] == {"malformed_json": 2, "missing_id": 1,
                                              "unknown_label": 4}
    assert_conserved(stats, tmp_path)


def test_repeated_ids(tmp_path):
    stats = run_ingest(tmp_path, [
        Item("same", label=0, text="first copy"),
        Item("same", label=0, text="second copy"),
        Item("clash", label=0),
        Item("clash", label=1, split="dev"),
        Item("clash", label=0, split="test"),
        Item("alone"),
    ])
    rows, held = manifest(tmp_path), quarantine(tmp_path)
    assert list(rows.index) == ["synthetic:alone", "synthetic:same"]
    assert rows.loc["synthetic:same", "text"] == "first copy"
    assert held.loc["synthetic:same", "reason"] == "duplicate_id"
    assert "synthetic:same" in held.loc["synthetic:same", "detail"]
    clash = held.loc["synthetic:clash"]
    assert len(clash) == 3 and set(clash["reason"]) == {"conflicting_labels"}
    assert stats["quarantined_by_reason"] == {"conflicting_labels": 3, "duplicate_id": 1}
    assert_conserved(stats, tmp_path)


def test_records_without_split_are_split_by_a_stable_hash(tmp_path):
    image_path = tmp_path / "one.png"
    image_path.write_bytes(fx.png_bytes(1))
    records = [RawRecord("synthetic", str(i), None, image_path, f"text {i}", 0, TASK,
                         image_root=tmp_path)
               for i in range(600)]
    params = make_params()
    stats = ingest.ingest_records(records, params, Paths(tmp_path), workers=1)
    splits = manifest(tmp_path)["split"]
    assert stats["per_split"]["train"] + stats["per_split"]["val"] + stats["per_split"][
        "test"] == 600
    assert 0.6 < stats["per_split"]["train"] / 600 < 0.8
    assert all(splits[f"synthetic:{i}"] == ingest.split_for_id(f"synthetic:{i}",
                                                                params.ingest.splits)
               for i in range(0, 600, 37))
    assert ingest.split_for_id("synthetic:42", params.ingest.splits) == \
        ingest.split_for_id("synthetic:42", params.ingest.splits)


def test_process_pool_gives_the_same_outputs(tmp_path):
    items = [Item(str(i), text=f"caption {i}", label=i % 2) for i in range(40)]
    items += [Item("bad", image=b"junk"), Item("7", label=1)]
    outputs = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        fx.write_layout(root / "data" / "synthetic" / TASK, items)
        stats = ingest.run(make_params(workers=workers), Paths(root))
        outputs[workers] = (stats, manifest(root), quarantine(root))
    assert outputs[1][0] == outputs[2][0]
    pd.testing.assert_frame_equal(outputs[1][1], outputs[2][1])
    pd.testing.assert_frame_equal(outputs[1][2], outputs[2][2])


def test_missing_source_folder_says_to_fetch(tmp_path):
    with pytest.raises(StageFailed, match="mmguard fetch --source synthetic"):
        ingest.run(make_params(), Paths(tmp_path))


def test_source_folder_without_jsonl_fails(tmp_path):
    (tmp_path / "data" / "synthetic" / TASK).mkdir(parents=True)
    with pytest.raises(StageFailed, match="no <split>.jsonl"):
        ingest.run(make_params(), Paths(tmp_path))


def test_sources_that_do_not_feed_the_task_fail(tmp_path):
    params = parse_params({"task": TASK, "ingest": {"sources": ["coco"]}})
    with pytest.raises(StageFailed, match="feeds task"):
        ingest.run(params, Paths(tmp_path))


def test_all_rows_quarantined_fails_but_writes_the_quarantine(tmp_path):
    with pytest.raises(StageFailed, match="kept no rows"):
        run_ingest(tmp_path, [Item("a", text=""), Item("b", image=b"")])
    assert set(reasons(tmp_path).values()) == {"empty_text", "empty_image"}
    assert len(manifest(tmp_path)) == 0


def test_stale_images_from_an_earlier_run_are_removed(tmp_path):
    run_ingest(tmp_path, [Item("a", image=fx.png_bytes(1))])
    run_ingest(tmp_path, [Item("a", image=fx.png_bytes(2))])
    stored = [p for p in Paths(tmp_path).image_store.rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [Path(manifest(tmp_path).iloc[0]["image_path"]).name]


def test_exif_rotation_is_applied_before_storing(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = fx.encode(fx.pattern_image(8, (80, 40)), "JPEG", exif=exif)
    plain = fx.jpeg_bytes(9, size=(80, 40))
    run_ingest(tmp_path, [Item("rotated", image=data, image_name="rotated.jpg"),
                          Item("plain", image=plain, image_name="plain.jpg")])
    rows = manifest(tmp_path)
    rotated = rows.loc["synthetic:rotated"]
    assert (rotated["width"], rotated["height"]) == (40, 80)
    assert rotated["image_path"].endswith(".png")
    assert stored_image(tmp_path, rotated).size == (40, 80)
    assert (tmp_path / rows.loc["synthetic:plain", "image_path"]).read_bytes() == plain
