"""A hostile corpus: every source format (the jsonl layout of `synthetic`, Hateful Memes imported
from a Hub parquet export, MMHS150K, Fakeddit, COCO) with good rows, valid-but-unusual images,
and bad rows of every kind ingest must survive, each with its expected fate.

    corpus = build(tmp_path)
    corpus.tasks["hateful_memes"].sources  -> the ingest.sources for that task's project
    corpus.tasks["hateful_memes"].fates    -> [(manifest id, fate)], one per record written

A fate is "kept", or "duplicate" (kept by ingest, dropped by dedupe as a copy of another row),
or the quarantine reason. Besides the data folders, `outside/secret.png` is a valid image outside
every source folder: paths and symlinks leading to it must be quarantined, never stored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.params import SplitFractions
from pipeline.sources import hateful_memes
from pipeline.stages.ingest import split_for_id
from tests.data import fixtures as fx
from tests.data.fixtures import Item

KEPT, DUPLICATE = "kept", "duplicate"
# Small enough that a padded 64x64 PNG is over it; every other image here is far under.
MAX_IMAGE_BYTES = 200_000


@dataclass
class TaskCorpus:
    root: Path
    sources: tuple[str, ...]
    fates: list[tuple[str, str]] = field(default_factory=list)
    bad_kinds: set[str] = field(default_factory=set)

    def add(self, record_id: str, fate: str, kind: str) -> None:
        """`kind` names what is odd about the row (several kinds share a reason)."""
        self.fates.append((record_id, fate))
        if fate != KEPT:
            self.bad_kinds.add(kind)


@dataclass
class Corpus:
    tasks: dict[str, TaskCorpus]
    outside: Path

    def kinds(self) -> set[str]:
        return {f"{name}/{kind}" for name, task in self.tasks.items() for kind in task.bad_kinds}


def exif_rotated_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return fx.encode(fx.pattern_image(seed, (80, 48)), "JPEG", exif=exif.tobytes())


def padded_png(seed: int) -> bytes:
    """A valid PNG over MAX_IMAGE_BYTES (bytes after IEND are ignored by decoders)."""
    return fx.png_bytes(seed) + b"\0" * (MAX_IMAGE_BYTES + 1)


def _outside(root: Path) -> Path:
    secret = root / "outside" / "secret.png"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(fx.png_bytes(999))
    return secret


def _json_line(**fields) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def _jsonl_source(corpus: TaskCorpus, secret: Path) -> None:
    """data/synthetic/hateful_memes: the jsonl layout, with every image and line problem."""
    folder = corpus.root / "data" / "synthetic" / "hateful_memes"
    add = lambda name, fate, kind: corpus.add(f"synthetic:{name}", fate, kind)  # noqa: E731
    items: list[tuple[Item, str | None]] = [
        # good and valid-but-unusual images: all kept
        (Item("good", text="a good caption"), KEPT),
        (Item("cmyk", text="cmyk jpeg", image=fx.cmyk_jpeg_bytes(1), image_name="cmyk.jpg"),
         KEPT),
        (Item("palette", text="palette png", image=fx.palette_png_bytes(2)), KEPT),
        (Item("palette_alpha", text="palette with transparency",
              image=fx.palette_png_bytes(3, transparent_index=0)), KEPT),
        (Item("alpha", text="half transparent", image=fx.rgba_png_bytes(4, alpha=128)), KEPT),
        (Item("gray16", text="sixteen bit ramp", image=fx.gray16_png_bytes()), KEPT),
        (Item("exif", text="rotated by exif", image=exif_rotated_jpeg(5),
              image_name="exif.jpg"), KEPT),
        (Item("jpeg_as_png", text="a jpeg named png", image=fx.jpeg_bytes(6)), KEPT),
        (Item("link_inside", text="symlink within the dataset", image=None), KEPT),
        (Item("label_by_name", text="label given by name", label="hateful"), KEPT),
        # image files that must not be read or stored
        (Item("traversal", text="dot dot", image=None,
              image_name="../../../../outside/secret.png"), "path_outside_dataset"),
        (Item("absolute", raw_line=_json_line(id="absolute", img=str(secret), text="absolute",
                                              label=0)), "path_outside_dataset"),
        (Item("link_outside", text="symlink out", image=None), "path_outside_dataset"),
        (Item("dev_zero", text="symlink to /dev/zero", image=None), "path_outside_dataset"),
        (Item("fifo", text="a fifo", image=None), "not_a_regular_file"),
        (Item("directory", text="a directory", image=None), "not_a_regular_file"),
        (Item("too_large", text="padded png", image=padded_png(7)), "file_too_large"),
        (Item("nul_path", raw_line=_json_line(id="nul_path", img="img/a\u0000b.png", text="t",
                                              label=0)), "path_outside_dataset"),
        # broken image files
        (Item("corrupt", text="random bytes", image=b"not an image at all " * 20),
         "corrupt_image"),
        (Item("truncated", text="cut short", image=fx.truncated(fx.png_bytes(8, (128, 128)))),
         "corrupt_image"),
        (Item("zero_byte", text="empty file", image=b""), "empty_image"),
        (Item("bomb", text="a bomb", image=fx.huge_header_png()), "decompression_bomb"),
        (Item("missing", text="no such file", image=None), "missing_image"),
        (Item("tiny", text="too small", image=fx.png_bytes(9, (8, 8))), "image_too_small"),
        # broken lines and values
        (Item("non_utf8_line", raw_line=b'{"id": "latin", "text": "caf\xe9", "img": "img/good.png", '
                            b'"label": 0}'), "invalid_utf8"),
        (Item("truncated_json", raw_line=b'{"id": "broken", "text": '), "malformed_json"),
        (Item("json_array", raw_line=b'["an", "array"]'), "malformed_json"),
        (Item("deeply_nested_json", raw_line=b"[" * 50_000 + b"]" * 50_000), "malformed_json"),
        (Item("no_id", raw_line=b'{"text": "no id", "label": 0}'), "missing_id"),
        (Item("superscript", text="label two squared", label="\u00b2"), "unknown_label"),
        (Item("huge_label", raw_line=b'{"id": "huge_label", "img": "img/good.png", '
                                     b'"text": "t", "label": ' + b"9" * 5000 + b"}"),
         "unknown_label"),
        (Item("banana", text="a fruit label", label="banana"), "unknown_label"),
        (Item("bool_label", text="a boolean label", label=True), "unknown_label"),
        (Item("blank", text=" \u200b\t "), "empty_text"),
        (Item("lone_surrogate_id", raw_line=b'{"id": "bad\\ud800id", "img": "img/good.png", "text": "t", '
                            b'"label": 0}'), "invalid_id"),
        (Item("control_char_id", raw_line=b'{"id": "ctrl\\u0007id", "img": "img/good.png", "text": "t", '
                            b'"label": 0}'), "invalid_id"),
        # repeated ids, conflicting labels, leaks across splits, near copies
        (Item("dup", text="repeated id"), KEPT),
        (Item("dup", text="repeated id, second line"), "duplicate_id"),
        (Item("clash", text="label one way", label=0), "conflicting_labels"),
        (Item("clash", text="label the other way", label=1, split="test"),
         "conflicting_labels"),
        (Item("leak_train", text="leaked caption", image=fx.png_bytes(77)), DUPLICATE),
        (Item("leak_test", text="leaked caption", image=fx.png_bytes(77), split="test"), KEPT),
        (Item("near_a", text="near caption", image=fx.png_bytes(88, (128, 128))), KEPT),
        (Item("near_b", text="near caption", image=fx.jpeg_bytes(88, (128, 128), quality=95),
              image_name="near_b.jpg"), DUPLICATE),
    ]
    fx.write_layout(folder, [item for item, _ in items])
    line_numbers: dict[str, int] = {}
    for item, fate in items:
        line_numbers[item.split] = line_numbers.get(item.split, 0) + 1
        if item.raw_line is not None and fate not in (KEPT, "path_outside_dataset",
                                                      "unknown_label", "invalid_id"):
            add(f"{item.split}.jsonl:{line_numbers[item.split]}", fate, item.id)
        elif item.raw_line is not None:
            add(json.loads(item.raw_line.decode("utf-8", "replace"), parse_int=str)["id"],
                fate, item.id)
        else:
            add(item.id, fate, item.id)
    images = folder / "img"
    (images / "inside_target.png").write_bytes(fx.png_bytes(55))
    (images / "link_inside.png").symlink_to("inside_target.png")
    (images / "link_outside.png").symlink_to(secret)
    (images / "dev_zero.png").symlink_to("/dev/zero")
    os.mkfifo(images / "fifo.png")
    (images / "directory.png").mkdir()


def _hateful_memes_source(corpus: TaskCorpus, scratch: Path) -> None:
    """data/hateful_memes, landed the way `fetch` lands a Hub parquet export: ids that would
    name files outside img/ are written under a safe name."""
    snapshot = scratch / "hf"
    (snapshot / "data").mkdir(parents=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("img", image), ("label", pa.int64()),
                        ("text", pa.string())])
    rows = {
        "train": [("hm_good", fx.png_bytes(101), "hm_good.png", 0, "hub caption", KEPT),
                  ("../../evil", fx.png_bytes(102), "../../evil", 1, "escaping id", KEPT),
                  ("hm_hateful", fx.png_bytes(103), None, 1, "hateful one", KEPT),
                  ("hm_no_image", None, None, 0, "no image", "missing_image"),
                  ("hm_bad_label", fx.png_bytes(104), "hm_bad_label.png", 5, "five",
                   "unknown_label")],
        "dev_seen": [("hm_dev", fx.png_bytes(105), "hm_dev.png", 0, "a dev caption", KEPT)],
    }
    for split, items in rows.items():
        table = pa.Table.from_pylist(
            [{"id": i, "img": {"bytes": b, "path": p} if b else None, "label": label,
              "text": text} for i, b, p, label, text, _ in items], schema=schema)
        pq.write_table(table, snapshot / "data" / f"{split}-00000-of-00001.parquet")
        for item_id, *_, fate in items:
            corpus.add(f"hateful_memes:{item_id}", fate, f"parquet {item_id}")
    dest = corpus.root / "data" / "hateful_memes"
    dest.mkdir(parents=True)
    hateful_memes.import_hf_snapshot(snapshot, dest)


def _mmhs150k_source(corpus: TaskCorpus, secret: Path) -> None:
    root = corpus.root / "data" / "mmhs150k"
    for folder in ("img_resized", "img_txt", "splits"):
        (root / folder).mkdir(parents=True)
    entries = [
        ("1001", '{"labels": [0, 0, 0], "tweet_text": "just a tweet https://t.co/abc"}', KEPT),
        ("1002", '{"labels": [1, 2, 0], "tweet_text": "a hateful tweet"}', KEPT),
        ("../../1003", '{"labels": [0, 0, 0], "tweet_text": "escaping id"}', "invalid_id"),
        ("1004", '{"labels": [1, 2], "tweet_text": "two annotators"}', "unknown_label"),
        ("1005", '{"labels": ["\u00b2", 0, 0], "tweet_text": "superscript"}',
         "unknown_label"),
        ("1006", '{"labels": [' + "9" * 5000 + ', 0, 0], "tweet_text": "huge"}',
         "unknown_label"),
        ("1007", '{"labels": [0, 0, 0], "tweet_text": "ocr is a fifo"}', "not_a_regular_file"),
        ("1008", '{"labels": [0, 0, 0], "tweet_text": "image links out"}',
         "path_outside_dataset"),
        ("1009", '{"labels": [0, 0, 0], "tweet_text": "in two splits"}', "conflicting_split"),
        ("1010", '{"labels": [0, 0, 0], "tweet_text": "no image file"}', "missing_image"),
        ("1011", '["not", "an", "object"]', "malformed_entry"),
        ("1013", '{"labels": [0, 0, 0], "tweet_text": "ocr not utf-8"}', "invalid_utf8"),
        ("1014", '{"labels": [0, 0, 0], "tweet_text": "conflict a"}', "conflicting_labels"),
        ("1014", '{"labels": [1, 1, 1], "tweet_text": "conflict b"}', "conflicting_labels"),
        ("1015", '{"labels": [0, 0, 0], "tweet_text": "repeat a"}', KEPT),
        ("1015", '{"labels": [0, 0, 0], "tweet_text": "repeat b"}', "duplicate_id"),
    ]
    body = ", ".join(f"{json.dumps(key)}: {value}" for key, value, _ in entries)
    (root / "MMHS150K_GT.json").write_text("{" + body + "}", encoding="utf-8")
    for key, _, fate in entries:
        corpus.add(f"mmhs150k:{key}", fate, f"tweet {key}")
    for seed, key in enumerate(("1001", "1002", "1004", "1005", "1006", "1007", "1009", "1011",
                                "1013", "1014", "1015"), start=200):
        (root / "img_resized" / f"{key}.jpg").write_bytes(fx.jpeg_bytes(seed))
    (root / "img_resized" / "1008.jpg").symlink_to(secret)
    (root / "img_txt" / "1002.json").write_text('{"img_text": "words in the image"}')
    os.mkfifo(root / "img_txt" / "1007.json")
    (root / "img_txt" / "1013.json").write_bytes(b'{"img_text": "caf\xe9"}')
    listed = [key for key, _, _ in entries if key != "../../1003"] + ["1012"]
    (root / "splits" / "train_ids.txt").write_text("\n".join(dict.fromkeys(listed)) + "\n")
    (root / "splits" / "test_ids.txt").write_text("1009\n")
    corpus.add("mmhs150k:1012", "missing_annotation", "tweet only in a split file")


def _tsv_field(value: str) -> str:
    if any(c in value for c in '\t\n\r"'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _fakeddit_source(corpus: TaskCorpus) -> None:
    root = corpus.root / "data" / "fakeddit"
    (root / "public_image_set").mkdir(parents=True)
    name = "multimodal_train.tsv"
    lines = [b"\tid\tclean_title\t6_way_label\thasImage\n"]

    def record(index: int, post_id: str, title: str, label: str, has_image: str = "True",
               ending: bytes = b"\n") -> bytes:
        fields = [str(index), post_id, _tsv_field(title), label, has_image]
        return "\t".join(fields).encode("utf-8") + ending

    def add(raw: bytes, record_id: str, fate: str) -> None:
        line = sum(chunk.count(b"\n") for chunk in lines) + 1
        lines.append(raw)
        corpus.add(f"fakeddit:{record_id}".replace("@", f"{name}:{line}"), fate,
                   f"tsv {fate}")

    add(record(0, "fk1", "a plain title", "0"), "fk1", KEPT)
    add(record(1, "fk2", 'a title with\na newline, a\ttab and "quotes"', "1"), "fk2", KEPT)
    add(record(2, "fk3", "the record after the multi-line one", "2"), "fk3", KEPT)
    add(b'3\tfk4\t"a quote that never closes\t4\tTrue\n', "@", "malformed_tsv")
    add(record(4, "fk5", "read again after the unclosed quote", "3"), "fk5", KEPT)
    add(b"5\tfk6\tmissing columns\n", "@", "wrong_column_count")
    add(b"6\tfk7\tcaf\xe9 au lait\t1\tTrue\n", "@", "invalid_utf8")
    add(record(7, "../../etc", "an id that climbs out", "1"), "@", "invalid_id")
    add(record(8, "fk9", "label squared", "\u00b2"), "fk9", "bad_label")
    add(record(9, "fk10", "label out of range", "9"), "fk10", "unknown_label")
    add(record(10, "fk11", "label written as a float", "3.0"), "fk11", KEPT)
    add(record(11, "fk12", "no image flagged", "2", has_image="False"), "fk12",
        "missing_image")
    add(record(12, "fk13", "a png saved as .jpg", "4"), "fk13", KEPT)
    add(record(13, "fk14", "windows line ending", "5", ending=b"\r\n"), "fk14", KEPT)
    (root / name).write_bytes(b"".join(lines))
    for seed, post_id in enumerate(("fk1", "fk2", "fk3", "fk5", "fk9", "fk10", "fk11", "fk14"),
                                   start=300):
        (root / "public_image_set" / f"{post_id}.jpg").write_bytes(fx.jpeg_bytes(seed))
    (root / "public_image_set" / "fk13.jpg").write_bytes(fx.png_bytes(320))
    # the other two split files: good records, one a multi-line title at the very end
    for seed, (split_file, post_id, title) in enumerate((
            ("multimodal_validate.tsv", "fv1", "a validation title"),
            ("multimodal_test_public.tsv", "ft1", "a test title"),
            ("multimodal_test_public.tsv", "ft2", 'the last title\nspans "two" lines')),
            start=330):
        path = root / split_file
        if not path.exists():
            path.write_bytes(lines[0])
        with path.open("ab") as out:
            out.write(record(seed, post_id, title, "1"))
        (root / "public_image_set" / f"{post_id}.jpg").write_bytes(fx.jpeg_bytes(seed))
        corpus.add(f"fakeddit:{post_id}", KEPT, "")


def _coco_source(corpus: TaskCorpus) -> None:
    root = corpus.root / "data" / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = [{"id": 1, "file_name": "000001.jpg"},
              {"id": 2, "file_name": "../../../outside/secret.png"},
              {"id": 3, "file_name": "000003.jpg"},
              {"id": 4},
              {"id": 5, "file_name": "000005.png"},
              {"id": 7, "file_name": "000007.jpg"}]
    annotations = [{"id": 10, "image_id": 1, "caption": "a photo of a red thing"},
                   {"id": 11, "image_id": 2, "caption": "outside"},
                   {"id": 12, "image_id": 5, "caption": "a grey ramp"},
                   {"id": 13, "image_id": 7, "caption": "a photo of a red thing"},
                   {"id": 14, "image_id": 99, "caption": "an orphan caption"},
                   {"id": "x", "image_id": 1, "caption": "an annotation without an int id"}]
    (root / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    (root / "val2017" / "000001.jpg").write_bytes(fx.jpeg_bytes(400))
    (root / "val2017" / "000003.jpg").write_bytes(fx.jpeg_bytes(401))
    (root / "val2017" / "000005.png").write_bytes(fx.gray16_png_bytes())
    (root / "val2017" / "000007.jpg").write_bytes(fx.jpeg_bytes(400))  # same bytes as 1
    # 1 and 7 are the same item; dedupe keeps the copy in the split it ranks first (test, val,
    # train), then the smaller id. COCO has no splits: ingest hashes the id into one.
    rank = {"test": 0, "val": 1, "train": 2}
    keeper = min(("coco:1", "coco:7"), key=lambda i: (rank[split_for_id(i, SplitFractions())], i))
    for record_id, fate in (("1", KEPT), ("2", "path_outside_dataset"),
                            ("3", "missing_caption"),
                            ("captions_val2017.json:images[3]", "malformed_entry"),
                            ("5", KEPT), ("7", KEPT), ("99", "orphan_caption")):
        if record_id in ("1", "7") and f"coco:{record_id}" != keeper:
            fate = DUPLICATE
        corpus.add(f"coco:{record_id}", fate, f"coco {fate}")


def build(base: Path) -> Corpus:
    """Two projects under `base`: hateful_memes (synthetic + hateful_memes sources) and
    moderation7 (mmhs150k + fakeddit + coco)."""
    binary = TaskCorpus(base / "hateful_memes", ("synthetic", "hateful_memes"))
    multi = TaskCorpus(base / "moderation7", ("mmhs150k", "fakeddit", "coco"))
    secret = _outside(base)
    for corpus in (binary, multi):
        corpus.root.mkdir(parents=True)
    # `outside/` is beside both projects, and reachable from each data folder by `..`
    for corpus in (binary, multi):
        (corpus.root / "outside").symlink_to(secret.parent)
    _jsonl_source(binary, secret)
    _hateful_memes_source(binary, base / "scratch")
    _mmhs150k_source(multi, secret)
    _fakeddit_source(multi)
    _coco_source(multi)
    return Corpus({"hateful_memes": binary, "moderation7": multi}, secret)


# ---------------------------------------------------------------- checking the fates

def params_for(task: str, sources: tuple[str, ...], workers: int = 1, **sections):
    from pipeline.params import parse_params

    return parse_params({"task": task, **sections,
                         "ingest": {"sources": list(sources), "workers": workers,
                                    "max_image_bytes": MAX_IMAGE_BYTES}})


def assert_ingest_fates(corpus: TaskCorpus, stats: dict) -> None:
    """Every record written is one manifest row (kept or later a duplicate) or one quarantine
    row with exactly its reason; and the counts add up."""
    from collections import Counter

    import pandas as pd

    from pipeline.paths import Paths
    from pipeline.stages.ingest import writable

    paths = Paths(corpus.root)
    rows = pd.read_parquet(paths.ingest_manifest)
    held = pd.read_parquet(paths.ingest_quarantine)
    expected_kept = Counter(writable(i) for i, fate in corpus.fates if fate in (KEPT, DUPLICATE))
    expected_held = Counter((writable(i), fate) for i, fate in corpus.fates
                            if fate not in (KEPT, DUPLICATE))
    assert Counter(rows["id"]) == expected_kept
    assert Counter(zip(held["id"], held["reason"])) == expected_held
    assert stats["rows_in"] == len(corpus.fates) == len(rows) + len(held)
    assert stats["kept"] == len(rows) and stats["quarantined"] == len(held)


def assert_nothing_from_outside(corpus: Corpus, root: Path) -> None:
    """The image outside the dataset was never copied into the image store."""
    import hashlib

    from pipeline.paths import Paths

    secret_sha = hashlib.sha256(corpus.outside.read_bytes()).hexdigest()
    stored = {p.name.split(".")[0] for p in Paths(root).image_store.rglob("*.*")}
    assert secret_sha not in stored
