"""The real-data source adapters on small fixtures built here in each source's real format."""
from __future__ import annotations

import fnmatch
import io
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import taxonomy, workflow
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.sources import coco, fakeddit, hateful_memes, mmhs150k
from pipeline.sources.download import FetchError

BAD_UTF8 = b"\xff\xfe not utf-8 \xc3\x28"


def write_image(path: Path, color=(200, 30, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), color).save(path, format=fmt)
    return path


def image_bytes(color=(10, 200, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def params_with(**fetch) -> object:
    return parse_params({"fetch": fetch})


def no_staging_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


# ------------------------------------------------------------------ Hateful Memes

def jsonl(lines: list[dict | bytes]) -> bytes:
    return b"".join(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
                    for line in lines)


def make_mmf(root: Path) -> Path:
    write_image(root / "img/01235.png", fmt="PNG")
    write_image(root / "img/42953.png", (0, 0, 255), fmt="PNG")
    write_image(root / "img/16395.png", (0, 255, 0), fmt="PNG")
    (root / "train.jsonl").write_bytes(jsonl([
        {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character"},
        b'{"id": 1, "img": "img/1.png", "label": \n',          # cut short
        b"\n",                                                 # blank: not a row
        BAD_UTF8 + b"\n",
        {"id": 1235, "img": "img/01235.png", "label": 1, "text": "a hateful one"},
    ]))
    (root / "dev_seen.jsonl").write_bytes(jsonl([
        {"id": 16395, "img": "img/16395.png", "label": 1, "text": "dev text"}]))
    (root / "test_unseen.jsonl").write_bytes(jsonl([
        {"id": 16396, "img": "img/16396.png", "label": 0, "text": "image not shipped"}]))
    (root / "README.md").write_text("the dataset card")
    return root


def test_hateful_memes_reader_keeps_every_line(tmp_path):
    records = list(hateful_memes.read(make_mmf(tmp_path / "mmf"), "hateful_memes"))
    assert len(records) == 6  # 7 lines, one blank
    by_id = {r.source_id: r for r in records}
    assert by_id["42953"].split == "train" and by_id["42953"].raw_label == 0
    assert by_id["42953"].image_path == tmp_path / "mmf/img/42953.png"
    assert by_id["16395"].split == "val" and by_id["16396"].split == "test"
    problems = sorted(r.problem.split(":")[0] for r in records if r.problem)
    assert problems == ["invalid_utf8", "malformed_json"]
    assert all(r.source == "hateful_memes" for r in records)


def test_hateful_memes_fetch_from_local_dir_replaces_dest(tmp_path):
    source = make_mmf(tmp_path / "mmf")
    dest = tmp_path / "data/hateful_memes"
    dest.mkdir(parents=True)
    (dest / "stale.jsonl").write_text("from an older fetch")
    hateful_memes.fetch(dest, params_with(hateful_memes={"local_dir": str(source)}))
    assert (dest / "train.jsonl").read_bytes() == (source / "train.jsonl").read_bytes()
    assert (dest / "img/01235.png").is_file() and not (dest / "stale.jsonl").exists()
    assert len(list(hateful_memes.read(dest, "hateful_memes"))) == 6
    assert no_staging_left(dest.parent)


def test_hateful_memes_fetch_refuses_a_folder_without_split_files(tmp_path):
    empty = tmp_path / "not_mmf"
    write_image(empty / "img/1.png")
    dest = tmp_path / "data/hateful_memes"
    dest.mkdir(parents=True)
    (dest / "train.jsonl").write_text("previous data")
    with pytest.raises(FetchError, match="no <split>.jsonl"):
        hateful_memes.fetch(dest, params_with(hateful_memes={"local_dir": str(empty)}))
    assert (dest / "train.jsonl").read_text() == "previous data"  # untouched on failure
    assert no_staging_left(dest.parent)
    with pytest.raises(FetchError, match="is not a folder"):
        hateful_memes.fetch(dest, params_with(hateful_memes={"local_dir": str(tmp_path / "x")}))


def test_hf_snapshot_in_mmf_layout_is_copied_without_hub_state(tmp_path):
    snapshot = make_mmf(tmp_path / "snapshot")
    (snapshot / ".cache/huggingface/download").mkdir(parents=True)
    (snapshot / ".cache/huggingface/download/train.jsonl.metadata").write_text("etag")
    dest = tmp_path / "dest"
    assert hateful_memes.import_hf_snapshot(snapshot, dest) == 6  # non-blank lines
    assert not (dest / ".cache").exists()
    assert (dest / "dev_seen.jsonl").is_file() and (dest / "img/42953.png").is_file()


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_hf_parquet_export_converts_to_jsonl_layout(tmp_path):
    snapshot = tmp_path / "snapshot"
    plain = pa.schema([("id", pa.int64()), ("img", pa.string()), ("label", pa.int64()),
                       ("text", pa.string())])
    write_parquet(snapshot / "default/train/0000.parquet", [
        {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character"},
        {"id": 1235, "img": "img/01235.png", "label": 1, "text": "ünïcode text"}], plain)
    write_parquet(snapshot / "default/validation/0000.parquet", [
        {"id": 16395, "img": "img/16395.png", "label": None, "text": "unlabelled"}], plain)
    write_image(snapshot / "img/42953.png", fmt="PNG")
    # The `datasets` Image feature embeds the bytes as a struct.
    embedded = pa.schema([("id", pa.int64()),
                          ("img", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          ("label", pa.int64()), ("text", pa.string())])
    write_parquet(snapshot / "data/test-00000-of-00001.parquet", [
        {"id": 7, "img": {"bytes": image_bytes(), "path": "00007.png"}, "label": 1,
         "text": "embedded"}], embedded)

    dest = tmp_path / "dest"
    assert hateful_memes.import_hf_snapshot(snapshot, dest) == 4
    records = {r.source_id: r for r in hateful_memes.read(dest, "hateful_memes")}
    assert {k: r.split for k, r in records.items()} == {
        "42953": "train", "1235": "train", "16395": "val", "7": "test"}
    assert records["1235"].text == "ünïcode text"
    assert records["16395"].raw_label is None  # kept: ingest quarantines it as unknown_label
    assert records["7"].image_path == dest / "img/00007.png"
    with Image.open(records["7"].image_path) as image:
        assert image.size == (16, 16)
    assert (dest / "img/42953.png").is_file()


def test_hf_parquet_with_unknown_split_is_an_error(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    write_parquet(tmp_path / "snap/data/extra-0000.parquet", [{"id": 1, "text": "t"}], schema)
    with pytest.raises(FetchError, match="cannot tell which split"):
        hateful_memes.import_hf_snapshot(tmp_path / "snap", tmp_path / "dest")
    with pytest.raises(FetchError, match="neither"):
        hateful_memes.import_hf_snapshot(tmp_path / "empty_snap", tmp_path / "dest")


def test_drive_archive_images_merged_and_gaps_filled_from_hub(tmp_path, monkeypatch):
    # The Hub copy: annotations for three memes and every image, one of them different from
    # the archive's so we can tell which copy landed.
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "train.jsonl").write_bytes(jsonl([
        {"id": n, "img": f"img/{n}.png", "label": n % 2, "text": f"meme {n}"}
        for n in (10, 11, 12)]))
    for n in (10, 11, 12):
        write_image(hub / f"img/{n}.png", (250, 250, 250), fmt="PNG")
    # The Drive archive: images 10 and 11 only, nested, plus a macOS resource fork.
    drive = tmp_path / "drive_content"
    write_image(drive / "hateful_memes/img/10.png", (1, 2, 3), fmt="PNG")
    write_image(drive / "hateful_memes/img/11.png", (1, 2, 3), fmt="PNG")
    (drive / "__MACOSX/hateful_memes/img").mkdir(parents=True)
    (drive / "__MACOSX/hateful_memes/img/._10.png").write_bytes(b"\x00\x05\x16\x07")
    archive = zip_folder(drive, tmp_path / "img.zip")

    hub_requests: list[list[str]] = []

    def hub_from_folder(repo_id, local_dir, allow_patterns):
        hub_requests.append(list(allow_patterns))
        for path in hub.rglob("*"):
            relative = path.relative_to(hub).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(relative, p) for p in allow_patterns):
                (Path(local_dir) / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(local_dir) / relative)
        return Path(local_dir)

    def drive_from_file(file_id, folder):
        assert file_id == "DRIVE_ID"
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(archive, folder / "img.zip"))

    monkeypatch.setattr(hateful_memes, "download_hf_snapshot", hub_from_folder)
    monkeypatch.setattr(hateful_memes, "download_gdrive", drive_from_file)
    dest = tmp_path / "data/hateful_memes"
    hateful_memes.fetch(dest, params_with(hateful_memes={"gdrive_archive_id": "DRIVE_ID"}))

    assert sorted(p.name for p in (dest / "img").iterdir()) == ["10.png", "11.png", "12.png"]
    with Image.open(dest / "img/10.png") as image:
        assert image.getpixel((0, 0)) == (1, 2, 3)  # the archive's copy, not the Hub's
    with Image.open(dest / "img/12.png") as image:
        assert image.getpixel((0, 0)) == (250, 250, 250)  # the gap, filled from the Hub
    assert hub_requests[-1] == ["img/12.png"]  # only the missing image was asked for
    assert hateful_memes.missing_images(dest) == []
    assert len(list(hateful_memes.read(dest, "hateful_memes"))) == 3
    assert no_staging_left(dest.parent)


# ------------------------------------------------------------------ MMHS150K

def make_mmhs(root: Path) -> Path:
    entry = {"img_url": "http://pbs.twimg.com/x.jpg", "labels_str": ["NotHate"] * 3,
             "tweet_url": "https://twitter.com/u/status/1"}
    # Written by hand: a dict cannot hold the repeated id "103" that the reader must keep.
    parts = [
        '"101": ' + json.dumps({**entry, "labels": [0, 1, 1],
                                "tweet_text": "look at this https://t.co/AbC123"}),
        '"102": ' + json.dumps({**entry, "labels": [1, "x"], "tweet_text": "bad labels"}),
        '"103": ' + json.dumps({**entry, "labels": [0, 0, 0], "tweet_text": "first 103"}),
        '"103": ' + json.dumps({**entry, "labels": [2, 2, 2], "tweet_text": "second 103"}),
        '"104": "not an object"',
        '"105": ' + json.dumps({**entry, "labels": [0, 0, 5], "tweet_text": "no split"}),
        '"106": ' + json.dumps({**entry, "labels": [0, 0, 0], "tweet_text": "bad ocr"}),
        '"107": ' + json.dumps({**entry, "labels": [3, 4, 0], "tweet_text": "two splits"}),
    ]
    root.mkdir(parents=True)
    (root / "MMHS150K_GT.json").write_text("{" + ", ".join(parts) + "}", encoding="utf-8")
    for tweet_id in ("101", "102", "103", "105", "106", "107"):
        write_image(root / f"img_resized/{tweet_id}.jpg", fmt="JPEG")
    (root / "img_txt").mkdir()
    (root / "img_txt/101.json").write_text(json.dumps({"img_text": "TEXT IN THE IMAGE"}))
    (root / "img_txt/106.json").write_bytes(b'{"img_text": "cut')
    (root / "img_txt/105.json").write_bytes(b'{"img_text": "' + BAD_UTF8 + b'"}')
    (root / "splits").mkdir()
    (root / "splits/train_ids.txt").write_text("101\n102\n103\n106\n107\n")
    (root / "splits/val_ids.txt").write_text("104\n\n")
    (root / "splits/test_ids.txt").write_text("107\n999\n")
    return root


def test_mmhs_reader(tmp_path):
    root = make_mmhs(tmp_path / "mmhs")
    records = list(mmhs150k.read(root, "moderation7"))
    assert [r.source_id for r in records] == ["101", "102", "103", "103", "104", "105", "106",
                                              "107", "999"]
    first = records[0]
    assert first.text == "look at this\nTEXT IN THE IMAGE"  # t.co link gone, OCR appended
    assert first.split == "train" and first.image_path == root / "img_resized/101.jpg"
    assert first.problem is None and taxonomy.map_label("mmhs150k", first.raw_label,
                                                        "moderation7") == (6, "Hate")
    with pytest.raises(taxonomy.UnknownLabel):  # the raw list stays raw for ingest to reject
        taxonomy.map_label("mmhs150k", records[1].raw_label, "moderation7")
    assert records[1].problem is None
    # A repeated id is kept twice; dedupe settles which copy stays.
    assert [r.text for r in records[2:4]] == ["first 103", "second 103"]
    problems = {r.source_id: r.problem.split(":")[0] for r in records if r.problem}
    assert problems == {"105": "invalid_utf8", "104": "malformed_entry",
                        "106": "malformed_ocr_json", "107": "conflicting_split",
                        "999": "missing_annotation"}
    assert records[5].split is None  # 105 is in no split file
    assert records[8].split == "test"


def test_mmhs_reader_rejects_broken_ground_truth(tmp_path):
    (tmp_path / "MMHS150K_GT.json").write_text('{"1": {"labels": [0, 0')
    with pytest.raises(ValueError, match="not valid JSON"):
        list(mmhs150k.read(tmp_path, "moderation7"))
    with pytest.raises(FileNotFoundError):
        list(mmhs150k.read(tmp_path / "nowhere", "moderation7"))


def test_mmhs_fetch_from_local_dir_and_from_zip_url(tmp_path):
    source = make_mmhs(tmp_path / "download/MMHS150K")  # wrapped in one folder, as shipped
    dest = tmp_path / "data/mmhs150k"
    mmhs150k.fetch(dest, params_with(mmhs150k={"local_dir": str(tmp_path / "download")}))
    assert (dest / "MMHS150K_GT.json").is_file() and (dest / "splits/test_ids.txt").is_file()
    assert len(list(mmhs150k.read(dest, "moderation7"))) == 9

    archive = zip_folder(source, tmp_path / "MMHS150K.zip", prefix="MMHS150K/")
    dest2 = tmp_path / "data2/mmhs150k"
    mmhs150k.fetch(dest2, params_with(mmhs150k={"url": archive.as_uri()}))
    assert sorted(p.name for p in dest2.iterdir()) == ["MMHS150K_GT.json", "img_resized",
                                                       "img_txt", "splits"]
    assert no_staging_left(dest2.parent)

    with pytest.raises(FetchError, match="local_dir or fetch.mmhs150k.url"):
        mmhs150k.fetch(dest, params_with())
    with pytest.raises(FetchError, match="download of"):
        mmhs150k.fetch(dest, params_with(mmhs150k={"url": (tmp_path / "no.zip").as_uri()}))
    assert (dest / "MMHS150K_GT.json").is_file()  # a failed fetch keeps the previous data


# ------------------------------------------------------------------ Fakeddit

FAKEDDIT_HEADER = ("\tauthor\tclean_title\tcreated_utc\tdomain\thasImage\tid\timage_url"
                   "\tlinked_submission_id\tnum_comments\tscore\tsubreddit\ttitle"
                   "\tupvote_ratio\t2_way_label\t3_way_label\t6_way_label")


def fakeddit_row(index: int, post_id: str, title: str, label: str, has_image="True") -> str:
    return "\t".join([str(index), "someone", title, "1551641428.0", "i.redd.it", has_image,
                      post_id, f"https://i.redd.it/{post_id}.jpg", "", "2.0", "12",
                      "photoshopbattles", title, "0.84", "1", "0", label])


def make_fakeddit(root: Path) -> Path:
    root.mkdir(parents=True)
    train = [FAKEDDIT_HEADER,
             fakeddit_row(0, "awxhir", "my walgreens offbrand mucinex", "0"),
             fakeddit_row(1, "b2png", "png only image", "2.0"),
             fakeddit_row(2, "cut", "missing columns", "1").rsplit("\t", 3)[0],
             fakeddit_row(3, "badlbl", "label is text", "satire"),
             fakeddit_row(4, "noimg", "no image flagged", "5", has_image="False"),
             fakeddit_row(5, "quoted", '"a title with a\ttab and ""quotes"""', "4"),
             ""]
    body = "\n".join(train).encode("utf-8")
    body += fakeddit_row(6, "latin", "caf\xe9", "3").encode("latin-1") + b"\n"
    (root / "multimodal_train.tsv").write_bytes(body)
    (root / "multimodal_validate.tsv").write_text(
        FAKEDDIT_HEADER + "\n" + fakeddit_row(0, "v1", "validation post", "1") + "\n")
    (root / "multimodal_test_public.tsv").write_text(
        FAKEDDIT_HEADER + "\r\n" + fakeddit_row(0, "t1", "test post", "6") + "\r\n")
    write_image(root / "public_image_set/awxhir.jpg", fmt="JPEG")
    write_image(root / "public_image_set/b2png.png", fmt="PNG")
    return root


def test_fakeddit_reader(tmp_path):
    root = make_fakeddit(tmp_path / "fakeddit")
    records = list(fakeddit.read(root, "moderation7"))
    assert len(records) == 9  # 7 non-blank train rows + 1 validate + 1 test
    by_id = {r.source_id: r for r in records}
    good = by_id["awxhir"]
    assert (good.split, good.text, good.raw_label) == ("train", "my walgreens offbrand mucinex", 0)
    assert good.image_path == root / "public_image_set/awxhir.jpg"
    assert by_id["b2png"].image_path == root / "public_image_set/b2png.png"
    assert by_id["b2png"].raw_label == 2
    assert by_id["noimg"].image_path is None
    assert by_id["quoted"].text == 'a title with a\ttab and "quotes"'
    assert by_id["v1"].split == "val" and by_id["t1"].split == "test"
    with pytest.raises(taxonomy.UnknownLabel):  # 6 is outside 0..5: ingest's call, not ours
        taxonomy.map_label("fakeddit", by_id["t1"].raw_label, "moderation7")
    problems = {r.source_id: r.problem.split(":")[0] for r in records if r.problem}
    assert problems == {"multimodal_train.tsv:4": "wrong_column_count",
                        "badlbl": "bad_label",
                        "multimodal_train.tsv:8": "invalid_utf8"}


def test_fakeddit_header_without_label_column_is_an_error(tmp_path):
    (tmp_path / "multimodal_train.tsv").write_text("id\tclean_title\n1\ttitle\n")
    with pytest.raises(ValueError, match="6_way_label"):
        list(fakeddit.read(tmp_path, "moderation7"))
    with pytest.raises(FileNotFoundError):
        list(fakeddit.read(tmp_path / "none", "moderation7"))


def test_fakeddit_fetch_from_local_dir(tmp_path):
    source = make_fakeddit(tmp_path / "fakeddit")
    dest = tmp_path / "data/fakeddit"
    fakeddit.fetch(dest, params_with(fakeddit={"local_dir": str(source)}))
    assert (dest / "public_image_set/awxhir.jpg").is_file()
    assert len(list(fakeddit.read(dest, "moderation7"))) == 9
    with pytest.raises(FetchError, match="hold none of"):
        fakeddit.fetch(tmp_path / "data/other",
                       params_with(fakeddit={"local_dir": str(source / "public_image_set")}))


# ------------------------------------------------------------------ COCO

def make_coco(root: Path) -> Path:
    captions = {
        "info": {"year": 2017}, "licenses": [],
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 20, "width": 24},
                   {"id": 285, "file_name": "000000000285.jpg"},
                   {"file_name": "no_id.jpg"},
                   {"id": 632, "file_name": "000000000632.jpg"}],
        "annotations": [{"id": 9, "image_id": 139, "caption": "a later caption"},
                        {"id": 2, "image_id": 139, "caption": "A woman in a kitchen."},
                        {"id": 5, "image_id": 285, "caption": "A big brown bear."},
                        {"id": 6, "image_id": 777, "caption": "an image nobody listed"},
                        {"id": 7, "image_id": 632}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/captions_val2017.json").write_text(json.dumps(captions))
    for name in ("000000000139.jpg", "000000000285.jpg", "000000000632.jpg"):
        write_image(root / "val2017" / name, fmt="JPEG")
    return root


def test_coco_reader_one_record_per_image_with_first_caption(tmp_path):
    root = make_coco(tmp_path / "coco")
    records = list(coco.read(root, "moderation7"))
    assert [r.source_id for r in records] == ["139", "285", "captions_val2017.json:images[2]",
                                              "632", "777"]
    first = records[0]
    assert first.text == "A woman in a kitchen." and first.split is None
    assert first.image_path == root / "val2017/000000000139.jpg"
    assert taxonomy.map_label("coco", first.raw_label, "moderation7") == (0, "True/Neutral")
    problems = {r.source_id: r.problem.split(":")[0] for r in records if r.problem}
    assert problems == {"captions_val2017.json:images[2]": "malformed_entry",
                        "632": "missing_caption", "777": "orphan_caption"}


def test_coco_reader_rejects_broken_annotation_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/captions_val2017.json").write_bytes(b'{"images": ' + BAD_UTF8)
    with pytest.raises(ValueError, match="not UTF-8"):
        list(coco.read(tmp_path, "moderation7"))
    (tmp_path / "annotations/captions_val2017.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="annotations"):
        list(coco.read(tmp_path, "moderation7"))


def test_coco_fetch_from_local_dir_and_from_zip_urls(tmp_path):
    source = make_coco(tmp_path / "coco")
    dest = tmp_path / "data/coco"
    coco.fetch(dest, params_with(coco={"local_dir": str(source)}))
    assert len(list(coco.read(dest, "moderation7"))) == 5

    # As the official zips: annotations_trainval2017.zip and val2017.zip, each one top folder.
    annotations = zip_folder(source / "annotations", tmp_path / "annotations_trainval2017.zip",
                             prefix="annotations/")
    images = zip_folder(source / "val2017", tmp_path / "val2017.zip", prefix="val2017/")
    dest2 = tmp_path / "data2/coco"
    coco.fetch(dest2, params_with(coco={"urls": [annotations.as_uri(), images.as_uri()]}))
    assert sorted(p.name for p in dest2.iterdir()) == ["annotations", "val2017"]
    assert [r.image_path.is_file() for r in coco.read(dest2, "moderation7")
            if r.problem is None] == [True, True]
    with pytest.raises(FetchError, match="local_dir or fetch.coco.urls"):
        coco.fetch(dest, params_with(coco={"urls": []}))


def test_fakeddit_reads_every_record_pandas_writes(tmp_path):
    """The published TSVs are written by pandas: titles holding newlines, tabs and quotes are
    quoted, and each must stay one record (a line-by-line reader split them in two)."""
    import random

    import pandas as pd

    rng = random.Random(0)
    pieces = ["plain", "a\nnewline", "a\ttab", 'a "quote"', "\r\n", '"', "x" * 300, "é"]
    titles = [" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(3000)]
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(len(titles))], "clean_title": titles,
                          "6_way_label": [i % 6 for i in range(len(titles))],
                          "hasImage": True})
    frame.to_csv(tmp_path / "multimodal_train.tsv", sep="\t")
    records = list(fakeddit.read(tmp_path, "moderation7"))
    assert [r.problem for r in records if r.problem] == []
    assert [r.source_id for r in records] == list(frame["id"])
    assert [r.text for r in records] == titles
    assert [r.raw_label for r in records] == list(frame["6_way_label"])


def test_fakeddit_unclosed_quote_costs_one_record_with_its_line_number(tmp_path):
    header = b"id\tclean_title\t6_way_label\n"
    body = (b'a1\t"two\nlines"\t0\n'           # lines 2-3: one record
            b'a2\t"never closed\t1\n'            # line 4
            b"a3\tfine\t2\n"                     # line 5: read again after the bad one
            b"a4\tnot quoted inside\t3\n")       # line 6
    (tmp_path / "multimodal_train.tsv").write_bytes(header + body)
    records = list(fakeddit.read(tmp_path, "moderation7"))
    assert [(r.source_id, (r.problem or "").split(":")[0]) for r in records] == [
        ("a1", ""), ("multimodal_train.tsv:4", "malformed_tsv"), ("a3", ""), ("a4", "")]
    assert records[0].text == "two\nlines"
    # a quote inside an unquoted field is a literal quote, as csv reads it
    (tmp_path / "multimodal_train.tsv").write_bytes(header + b'b1\tsay "hi" now\t4\n')
    assert [r.text for r in fakeddit.read(tmp_path, "moderation7")] == ['say "hi" now']


def test_hateful_memes_fetch_never_checks_or_copies_names_that_leave_the_folder(tmp_path):
    root, snapshot = tmp_path / "land" / "hm", tmp_path / "snap"
    (root / "img").mkdir(parents=True)
    (snapshot / "img").mkdir(parents=True)
    (snapshot / "img" / "ok.png").write_bytes(b"png")
    (tmp_path / "escape.png").write_bytes(b"not to be copied")
    # snapshot / "../escape.png" exists; root / "../escape.png" is land/escape.png
    lines = [{"id": 1, "img": "img/ok.png"}, {"id": 2, "img": "../escape.png"},
             {"id": 3, "img": "/etc/passwd"}, {"id": 4, "img": "img/a\u0000b.png"}]
    (root / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert hateful_memes.missing_images(root) == ["img/ok.png"]
    assert hateful_memes.fill_missing_from_snapshot(snapshot, root) == 1
    assert not (tmp_path / "land" / "escape.png").exists()


# ------------------------------------------------------------------ fetch stays inside the folder

# Each source's local folder and the sub-folder its images live in (mmhs150k ships wrapped in
# one top folder, which fetch lifts).
LOCAL_FOLDERS = {
    "hateful_memes": (hateful_memes, lambda root: make_mmf(root), "img", "01235.png"),
    "mmhs150k": (mmhs150k, lambda root: make_mmhs(root / "MMHS150K").parent,
                 "MMHS150K/img_resized", "101.jpg"),
    "fakeddit": (fakeddit, lambda root: make_fakeddit(root), "public_image_set", "awxhir.jpg"),
    "coco": (coco, lambda root: make_coco(root), "val2017", "000000000139.jpg"),
}


def plant_hostile_entries(images: Path, secret: Path, good: str) -> dict[str, str]:
    """Entries no fetch may read, named so that the FIFO sorts first (the old copy failed on
    it before it could reach /dev/zero); returns name -> the reason fetch must give."""
    os.mkfifo(images / "a-fifo.png")
    (images / "b-outside.png").symlink_to(secret)
    (images / "c-zero.png").symlink_to("/dev/zero")
    (images / "d-inside.png").symlink_to(good)  # stays inside and is a regular file: copied
    with socket.socket(socket.AF_UNIX) as server:
        cwd = os.getcwd()
        os.chdir(images)  # a relative name keeps the socket path under AF_UNIX's 108 bytes
        try:
            server.bind("e-socket.png")
        finally:
            os.chdir(cwd)
    (images / "f-outside-folder").symlink_to(secret.parent, target_is_directory=True)
    return {"a-fifo.png": "not_a_regular_file", "b-outside.png": "path_outside_dataset",
            "c-zero.png": "path_outside_dataset", "e-socket.png": "not_a_regular_file",
            "f-outside-folder": "path_outside_dataset"}


@pytest.mark.timeout(60)  # a fetch that opened the FIFO or read /dev/zero would never end
@pytest.mark.parametrize("source", sorted(LOCAL_FOLDERS))
def test_fetch_copies_only_regular_files_inside_the_local_folder(tmp_path, source):
    module, make, image_dir, good = LOCAL_FOLDERS[source]
    local = make(tmp_path / "local")
    secret = tmp_path / "elsewhere/secret.png"
    write_image(secret, (1, 2, 3), fmt="PNG")
    expected = plant_hostile_entries(local / image_dir, secret, good)
    dest = tmp_path / "data" / source

    module.fetch(dest, params_with(**{source: {"local_dir": str(local)}}))

    landed = dest / image_dir.removeprefix("MMHS150K/")
    assert (landed / good).is_file()
    inside = landed / "d-inside.png"  # the in-folder symlink lands as a regular file
    assert not inside.is_symlink() and inside.read_bytes() == (landed / good).read_bytes()
    for name in expected:
        assert not os.path.lexists(landed / name), name
    secret_bytes = secret.read_bytes()
    assert not [p for p in dest.rglob("*") if p.is_file() and p.read_bytes() == secret_bytes]

    record = json.loads((tmp_path / "artifacts/fetch/stats.json").read_text())[source]
    prefix = image_dir + "/"
    assert {entry["path"].removeprefix(prefix): entry["reason"]
            for entry in record["skipped_entries"]} == expected
    assert record["skipped"] == 5
    assert record["skipped_by_reason"] == {"not_a_regular_file": 2, "path_outside_dataset": 3}
    copied = sum(1 for p in local.rglob("*") if p.is_file() and not p.is_symlink()) + 1
    assert record["files_copied"] == copied
    shown = workflow.summary(Paths(tmp_path))
    assert f"fetch {source}" in shown and "skipped 5" in shown
    assert all(name in shown for name in expected)


def test_fetch_record_keeps_other_sources_and_counts_hidden_entries(tmp_path):
    coco_dir = make_coco(tmp_path / "coco")
    (coco_dir / ".DS_Store").write_bytes(b"finder state")
    coco.fetch(tmp_path / "data/coco", params_with(coco={"local_dir": str(coco_dir)}))
    hateful_memes.fetch(tmp_path / "data/hateful_memes",
                        params_with(hateful_memes={"local_dir": str(make_mmf(tmp_path / "m"))}))
    record = json.loads((tmp_path / "artifacts/fetch/stats.json").read_text())
    assert sorted(record) == ["coco", "hateful_memes"]
    assert record["coco"]["skipped_entries"] == [
        {"path": ".DS_Store", "reason": "hidden", "detail": "hidden file, not data"}]
    assert record["hateful_memes"] == {"files_copied": 7, "skipped": 0, "skipped_by_reason": {},
                                       "skipped_entries": []}
