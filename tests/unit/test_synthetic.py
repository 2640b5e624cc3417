"""The embedded synthetic source: determinism, real images, label logic, planted defects."""
import hashlib
import io
import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pipeline.params import Params, parse_params
from pipeline.sources import get_source
from pipeline.sources import synthetic as syn
from pipeline.taxonomy import class_names, map_label

SMALL = {"items_per_task": 140}
TASKS = ("hateful_memes", "moderation7")


def _params(**synthetic) -> Params:
    return parse_params({"synthetic": {**SMALL, **synthetic}})


def _digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _lines(folder: Path) -> dict[str, dict]:
    rows = {}
    for split in ("train", "val", "test"):
        for line in (folder / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert row["id"] not in rows, f"id {row['id']} appears twice"
            rows[row["id"]] = {**row, "split": split}
    return rows


def _dhash(image: Image.Image) -> int:
    """64-bit difference hash: brightness gradients of a 9x8 thumbnail."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=float)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("data") / "synthetic"
    syn.fetch(dest, _params())
    return dest


# --- determinism -------------------------------------------------------------------------------
def test_two_fetches_give_identical_bytes_and_a_new_seed_changes_them(fetched, tmp_path):
    again = tmp_path / "again"
    get_source("synthetic").fetch(again, _params())
    first, second = _digests(fetched), _digests(again)
    assert len(first) > 2 * 140
    assert first == second

    other_seed = tmp_path / "seed1"
    syn.write_task(other_seed, _params(seed=1), "hateful_memes")
    assert _digests(other_seed)["train.jsonl"] != first["hateful_memes/train.jsonl"]


def test_refetch_replaces_stale_files(fetched, tmp_path):
    dest = tmp_path / "synthetic"
    shutil.copytree(fetched, dest)
    before = _digests(dest)
    (dest / "moderation7" / "img" / "stale.png").write_bytes(b"left over")
    (dest / "moderation7" / "train.jsonl").write_text("garbage\n")
    syn.fetch(dest, _params())
    assert _digests(dest) == before
    assert not list(dest.glob(".*.partial"))


# --- images ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_every_clean_image_decodes_with_varied_sizes_and_both_formats(fetched, task):
    folder = fetched / task
    planted = {d["id"] for d in json.loads((folder / "planted.json").read_text())["defects"]}
    settings = _params().synthetic
    formats, sizes = Counter(), set()
    for item_id, row in _lines(folder).items():
        if item_id in planted:  # checked in test_planted_defects_are_present_and_recorded
            continue
        with Image.open(folder / row["img"]) as image:
            image.load()
            formats[image.format] += 1
            assert (image.format == "PNG") == row["img"].endswith(".png")
            assert all(settings.image_min_side <= side <= settings.image_max_side
                       for side in image.size)
            sizes.add(image.size)
    assert formats["PNG"] > 20 and formats["JPEG"] > 20
    assert len(sizes) > 50


def test_subject_stays_inside_the_centre_crop():
    # CLIP preprocessing centre-crops; the subject must survive it.
    for task in TASKS:
        for item in syn.generate_items(_params(image_min_side=40, image_max_side=300), task):
            spec, short = item.image, min(item.image.width, item.image.height)
            assert max(spec.width, spec.height) <= 1.5 * short + 1
            x0, y0, reach = (spec.width - short) // 2, (spec.height - short) // 2, 1.2 * spec.radius
            assert x0 <= spec.cx - reach and spec.cx + reach <= x0 + short, spec
            assert y0 <= spec.cy - reach and spec.cy + reach <= y0 + short, spec


def _dominant_subject_colour(image: Image.Image) -> str:
    pixels = np.asarray(image.convert("RGB"), dtype=int).reshape(-1, 3)
    counts = {name: int(np.sum(np.abs(pixels - np.array(rgb)).max(axis=1) < 45))
              for name, rgb in syn.M7_COLOURS.items()}
    return max(counts, key=counts.get)


def test_rendered_subject_has_the_colour_the_item_says():
    items = syn.generate_items(_params(), "moderation7")[:40]
    for item in items:
        assert _dominant_subject_colour(syn.render_image(item.image)) == item.image.colour, item


def test_banner_never_carries_label_deciding_words():
    deciding = ({w.lower() for w in syn.GROUPS + syn.OBJECTS} | set(syn.HM_COLOURS)
                | set(syn.M7_SHAPES + syn.HOSTILE_SHAPES + syn.NEUTRAL_SHAPES)
                | {m for markers in syn.FRAMING_MARKERS.values() for m in markers})
    for task in TASKS:
        for item in syn.generate_items(_params(), task):
            banner = item.image.banner.lower()
            assert not [w for w in deciding if re.search(rf"\b{re.escape(w)}\b", banner)], banner


# --- hateful_memes -----------------------------------------------------------------------------
def _auroc_of_ideal(items, attribute) -> float:
    """AUROC of the Bayes predictor that sees only `attribute(item)`: P(hateful | attribute)."""
    groups = defaultdict(list)
    for item in items:
        groups[attribute(item)].append(item.label == "hateful")
    score = {key: float(np.mean(values)) for key, values in groups.items()}
    truth = [item.label == "hateful" for item in items]
    return roc_auc_score(truth, [score[attribute(item)] for item in items])


def test_hateful_memes_needs_both_modalities():
    items = syn.generate_items(Params(), "hateful_memes")
    text_only = _auroc_of_ideal(items, lambda i: i.group_target)
    image_only = _auroc_of_ideal(items, lambda i: i.hostile_image)
    both = _auroc_of_ideal(items, lambda i: (i.hostile_image, i.group_target))
    assert 0.65 <= text_only <= 0.80
    assert 0.65 <= image_only <= 0.80
    assert both == 1.0
    positive_share = np.mean([item.label == "hateful" for item in items])
    assert 0.35 <= positive_share <= 0.45


def test_confounder_sets_share_caption_or_image_and_stay_in_one_split():
    items = syn.generate_items(Params(), "hateful_memes")
    sets = defaultdict(list)
    for item in items:
        family = syn.HOSTILE_SHAPES if item.hostile_image else syn.NEUTRAL_SHAPES
        assert item.image.shape in family
        assert any(group in item.text for group in syn.GROUPS) == item.group_target
        sets[item.set_id].append(item)
    for set_id, members in sets.items():
        if set_id is None:
            continue
        assert len({m.split for m in members}) == 1
        hateful = [m for m in members if m.role == "hateful"]
        assert len(hateful) == 1
        for member in members:
            if member.role == "text_confounder":
                assert member.text == hateful[0].text and member.image != hateful[0].image
            if member.role == "image_confounder":
                assert member.image == hateful[0].image and member.text != hateful[0].text
    roles = Counter(item.role for item in items)
    assert roles["text_confounder"] >= 0.25 * len(items)
    assert roles["image_confounder"] >= 0.25 * len(items)


def test_benign_fraction_adds_plain_items():
    items = syn.generate_items(_params(benign_fraction=0.2, items_per_task=300), "hateful_memes")
    benign = [item for item in items if item.role == "benign"]
    assert 55 <= len(benign) <= 65
    assert not any(item.hostile_image or item.group_target for item in benign)


def test_label_noise_flips_exactly_its_share_and_only_labels():
    clean = syn.generate_items(_params(items_per_task=200), "moderation7")
    noisy = syn.generate_items(_params(items_per_task=200, label_noise=0.1), "moderation7")
    flipped = [n for n in noisy if n.label != n.clean_label]
    assert len(flipped) == 20
    assert [c.text for c in clean] == [n.text for n in noisy]  # noise does not move anything else
    assert [c.image for c in clean] == [n.image for n in noisy]


# --- moderation7 -------------------------------------------------------------------------------
def _names(text: str, vocabulary) -> set[str]:
    return {word for word in vocabulary if word in text.split()}


def test_moderation7_classes_are_balanced_in_every_split():
    items = syn.generate_items(Params(), "moderation7")
    for split in ("train", "val", "test"):
        counts = Counter(item.label for item in items if item.split == split)
        assert set(counts) == set(class_names("moderation7"))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_only_true_neutral_captions_describe_the_image_faithfully():
    items = syn.generate_items(Params(), "moderation7")
    all_markers = [m for markers in syn.FRAMING_MARKERS.values() for m in markers]
    for item in items:
        text, drawn = item.text.lower(), item.image
        colours, shapes = _names(text, syn.M7_COLOURS), _names(text, syn.M7_SHAPES)
        framed = any(marker in text for marker in all_markers)
        faithful = colours == {drawn.colour} and shapes == {drawn.shape} and not framed
        assert faithful == (item.label == "True/Neutral"), item
        if item.label == "Misleading Content":
            assert shapes == {drawn.shape} and colours and drawn.colour not in colours
        if item.label == "False Connection":
            assert colours == {drawn.colour} and shapes and drawn.shape not in shapes
        if item.label in syn.FRAMING_MARKERS:
            assert any(m in text for m in syn.FRAMING_MARKERS[item.label])
        assert drawn.glitch == (item.label == "Manipulated Content")
        assert drawn.badge == (item.label == "Imposter Content")
        hate = item.label == "Hate"
        assert (drawn.shape in syn.HOSTILE_SHAPES) == hate
        assert any(group in item.text for group in syn.GROUPS) == hate


# --- planted defects ---------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_planted_defects_are_present_and_recorded(fetched, task):
    folder = fetched / task
    rows = _lines(folder)
    planted = json.loads((folder / "planted.json").read_text())
    settings = _params().synthetic
    kinds = Counter(d["kind"] for d in planted["defects"])
    assert kinds["exact_duplicate"] == settings.plant_exact_duplicates
    assert kinds["near_duplicate"] == settings.plant_near_duplicates
    assert sum(kinds[k] for k in syn.PLANTED_BROKEN_KINDS) == settings.plant_broken
    assert set(syn.PLANTED_BROKEN_KINDS) <= set(kinds)
    assert planted["clean_items"] + len(planted["defects"]) == len(rows)
    sources = [d["source_item"] for d in planted["defects"]]
    assert len(set(sources)) == len(sources)  # no clean item feeds two defects

    cross_split = 0
    for defect in planted["defects"]:
        row, source = rows[defect["id"]], rows[defect["source_item"]]
        assert row["split"] == defect["split"] and row["img"] == defect["img"]
        assert (row["text"], row["label"]) == (source["text"], source["label"])
        path, source_path = folder / row["img"], folder / source["img"]
        if defect["kind"] == "exact_duplicate":
            assert path.read_bytes() == source_path.read_bytes()
            cross_split += row["split"] != source["split"]
        elif defect["kind"] == "near_duplicate":
            assert path.read_bytes() != source_path.read_bytes()
            with Image.open(path) as copy, Image.open(source_path) as original:
                assert copy.size != original.size
                assert _hamming(_dhash(copy), _dhash(original)) <= 4
        elif defect["kind"] == "missing_image":
            assert not path.exists()
        elif defect["kind"] == "zero_byte":
            assert path.stat().st_size == 0
        else:  # truncated_png, not_an_image: the bytes exist but do not decode
            with pytest.raises(OSError):
                with Image.open(io.BytesIO(path.read_bytes())) as image:
                    image.load()
    assert cross_split >= 1


@pytest.mark.parametrize("task", TASKS)
def test_no_accidental_near_duplicates_among_clean_items(fetched, task):
    # Items that share a caption by design (text confounders) must look different, or dedupe
    # would take them for near duplicates.
    folder = fetched / task
    rows = _lines(folder)
    clean = syn.generate_items(_params(), task)
    by_text = defaultdict(list)
    for item in clean:
        by_text[item.text].append(item)
    for text, group in by_text.items():
        if len(group) < 2:
            continue
        assert task == "hateful_memes" and {i.role for i in group} <= {"hateful", "text_confounder"}
        hashes = [_dhash(Image.open(folder / rows[i.id]["img"])) for i in group]
        assert _hamming(hashes[0], hashes[1]) > 8, text


# --- reading back ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_read_yields_every_line_with_mappable_labels(fetched, task):
    rows = _lines(fetched / task)
    records = list(syn.read(fetched, task))
    assert len(records) == len(rows)
    assert {r.source_id for r in records} == set(rows)
    for record in records:
        assert record.problem is None and record.source == "synthetic" and record.task == task
        assert record.split == rows[record.source_id]["split"]
        map_label("synthetic", record.raw_label, task)  # raises on an unknown label


# --- bad inputs --------------------------------------------------------------------------------
def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        syn.generate_items(Params(), "memes")


def test_more_planted_defects_than_items_is_refused():
    params = _params(items_per_task=60, plant_exact_duplicates=40, plant_near_duplicates=30)
    items = syn.generate_items(params, "moderation7")
    with pytest.raises(ValueError, match="planted defects"):
        syn.plant_defects(params, "moderation7", items)
