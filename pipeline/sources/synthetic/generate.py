"""Generating the synthetic items, their splits and planted defects, and writing them out."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.params import Params
from pipeline.paths import SPLITS
from pipeline.sources.base import RawRecord
from pipeline.sources.jsonl_layout import read_layout
from pipeline.taxonomy import class_names

from .render import ImageSpec, _broken_bytes, _near_duplicate_bytes, encode_image, render_image
from .vocabulary import (BANNER_PREFIXES, FAITHFUL_TEMPLATES, HM_COLOURS, IMPOSTER_TEMPLATES,
                         M7_COLOURS, M7_SHAPES, MANIPULATED_TEMPLATES, SATIRE_TEMPLATES, SCENES,
                         TARGET_TEMPLATES, WHEN, _Captions, _pick, _scene_words, _vocabulary)

SOURCE = "synthetic"
TASK_CODES = {"hateful_memes": 0, "moderation7": 1}  # stable seed salts (never hash())
ID_PREFIX = {"hateful_memes": "hm", "moderation7": "m7"}

PLANTED_BROKEN_KINDS = ("truncated_png", "zero_byte", "not_an_image", "missing_image")


@dataclass(frozen=True)
class SyntheticItem:
    id: str
    task: str
    split: str
    text: str
    label: str                   # class name written to the jsonl (after label noise)
    clean_label: str             # the label before noise
    image: ImageSpec
    role: str                    # hateful_memes: hateful/text_confounder/image_confounder/benign;
    #                              moderation7: the class name it was built as
    hostile_image: bool          # attribute a
    group_target: bool           # attribute b
    caption_shape: str | None = None
    caption_colour: str | None = None
    set_id: int | None = None    # hateful_memes confounder set

    @property
    def img(self) -> str:
        return f"img/{self.id}.{self.image.fmt}"


@dataclass(frozen=True)
class PlantedDefect:
    id: str
    kind: str                    # exact_duplicate, near_duplicate or one of PLANTED_BROKEN_KINDS
    split: str
    text: str
    label: str
    source_item: str             # the clean item it was made from
    source_split: str
    img: str

    def manifest_entry(self) -> dict:
        return {"id": self.id, "kind": self.kind, "split": self.split, "img": self.img,
                "source_item": self.source_item, "source_split": self.source_split}


# --- generation (pure) -------------------------------------------------------------------------
def _rng(params: Params, task: str, purpose: int) -> np.random.Generator:
    # One independent stream per task and purpose, so that e.g. turning label noise on does not
    # change any image.
    return np.random.default_rng([params.synthetic.seed, TASK_CODES[task], purpose])


def split_sizes(n: int, params: Params) -> dict[str, int]:
    fractions = params.synthetic.splits
    val = max(1, round(n * fractions.val))
    test = max(1, round(n * fractions.test))
    return {"train": n - val - test, "val": val, "test": test}


def _image_spec(rng: np.random.Generator, params: Params, shape: str, colour: str,
                palette: dict[str, tuple[int, int, int]], glitch: bool = False,
                badge: bool = False) -> ImageSpec:
    settings = params.synthetic
    low, high = settings.image_min_side, settings.image_max_side
    width = int(rng.integers(low, high + 1))
    # Aspect ratio at most 3:2, so a centre crop (CLIP preprocessing) keeps most of the picture.
    height = int(rng.integers(max(low, -(-width * 2 // 3)), min(high, width * 3 // 2) + 1))
    short = min(width, height)
    radius = int(short * rng.uniform(0.24, 0.32))
    # The subject stays inside the central square, which a centre crop keeps, and below the
    # banner (top ~22%) where there is room; the pointiest shapes reach 1.2 radii out.
    x0, y0 = (width - short) // 2, (height - short) // 2
    reach = int(1.2 * radius) + 2
    cx = int(rng.integers(x0 + reach, max(x0 + reach + 1, x0 + short - reach)))
    bottom = y0 + short - reach
    top = min(max(y0 + reach, int(0.22 * height) + radius), bottom)
    cy = int(rng.integers(top, max(top + 1, bottom)))
    base = np.array(palette[colour])
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-18, 19, size=3), 0, 255))
    scene = _pick(rng, SCENES)[0]
    prefix = _pick(rng, BANNER_PREFIXES)
    return ImageSpec(
        width=width, height=height, fmt=_pick(rng, ("png", "jpg")), scene=scene,
        banner=f"{prefix} {scene}".strip().upper(), shape=shape, colour=colour, rgb=rgb,
        cx=cx, cy=cy, radius=radius, rotation=int(rng.integers(-25, 26)),
        texture_seed=int(rng.integers(2**31)), glitch=glitch, badge=badge,
    )


def _hateful_split(rng: np.random.Generator, captions: _Captions, params: Params, split: str,
                   n: int, first_set: int) -> list[dict]:
    n_benign = round(n * params.synthetic.benign_fraction)
    # Three sets in four carry both confounders, one only the text, one only the image:
    # hateful : text confounder : image confounder = 4 : 3 : 3.
    patterns = (("text", "image"), ("text", "image"), ("text",), ("image",))
    scenes = _scene_words()
    words = _vocabulary(params)

    def neutral_spec():
        return _image_spec(rng, params, _pick(rng, words.neutral_shapes),
                           _pick(rng, tuple(HM_COLOURS)), HM_COLOURS)

    def object_caption():
        return captions.draw(TARGET_TEMPLATES, target=words.objects, scene=scenes)

    drafts: list[dict] = []
    set_id = first_set
    while len(drafts) < n - n_benign:
        hostile = _image_spec(rng, params, _pick(rng, words.hostile_shapes),
                              _pick(rng, tuple(HM_COLOURS)), HM_COLOURS)
        hate_caption = captions.draw(TARGET_TEMPLATES, target=words.groups, scene=scenes)
        members = [("hateful", hostile, hate_caption, True, True)]
        for confounder in patterns[set_id % len(patterns)]:
            if confounder == "text":  # same caption, a neutral image
                members.append(("text_confounder", neutral_spec(), hate_caption, False, True))
            else:  # same image, a caption about objects
                members.append(("image_confounder", hostile, object_caption(), True, False))
        for role, spec, text, hostile_image, group_target in members[:n - n_benign - len(drafts)]:
            drafts.append({"role": role, "image": spec, "text": text, "set_id": set_id,
                           "hostile_image": hostile_image, "group_target": group_target,
                           "clean_label": "hateful" if role == "hateful" else "not_hateful"})
        set_id += 1
    for _ in range(n_benign):
        drafts.append({"role": "benign", "image": neutral_spec(), "text": object_caption(),
                       "set_id": None, "hostile_image": False, "group_target": False,
                       "clean_label": "not_hateful"})
    return drafts


def _moderation_draft(rng: np.random.Generator, captions: _Captions, params: Params,
                      label: str) -> dict:
    scenes = _scene_words()
    words = _vocabulary(params)
    if label == "Hate":
        spec = _image_spec(rng, params, _pick(rng, words.hostile_shapes),
                           _pick(rng, tuple(M7_COLOURS)), M7_COLOURS)
        text = captions.draw(TARGET_TEMPLATES, target=words.groups, scene=scenes)
        return {"image": spec, "text": text, "hostile_image": True, "group_target": True,
                "caption_shape": None, "caption_colour": None}
    shape, colour = _pick(rng, M7_SHAPES), _pick(rng, tuple(M7_COLOURS))
    spec = _image_spec(rng, params, shape, colour, M7_COLOURS,
                       glitch=label == "Manipulated Content", badge=label == "Imposter Content")
    said_shape, said_colour = shape, colour
    if label == "Misleading Content":
        said_colour = _pick(rng, tuple(c for c in M7_COLOURS if c != colour))
    if label == "False Connection":
        said_shape = _pick(rng, tuple(s for s in M7_SHAPES if s != shape))
    templates = {
        "Satire/Parody": SATIRE_TEMPLATES, "Imposter Content": IMPOSTER_TEMPLATES,
        "Manipulated Content": MANIPULATED_TEMPLATES,
    }.get(label, FAITHFUL_TEMPLATES)
    text = captions.draw(templates, colour=(said_colour,), shape=(said_shape,), scene=scenes,
                         when=WHEN)
    return {"image": spec, "text": text, "hostile_image": False, "group_target": False,
            "caption_shape": said_shape, "caption_colour": said_colour}


def _moderation_split(rng: np.random.Generator, captions: _Captions, params: Params,
                      n: int) -> list[dict]:
    names = class_names("moderation7")
    labels = [names[k % len(names)] for k in range(n)]  # balanced up to one item per class
    order = rng.permutation(n)
    drafts = []
    for index in order:
        label = labels[int(index)]
        draft = _moderation_draft(rng, captions, params, label)
        drafts.append({**draft, "role": label, "clean_label": label, "set_id": None})
    return drafts


def _noisy_labels(params: Params, task: str, clean: list[str]) -> list[str]:
    names = class_names(task)
    rng = _rng(params, task, purpose=2)
    flips = round(params.synthetic.label_noise * len(clean))
    labels = list(clean)
    for index in sorted(int(i) for i in rng.choice(len(clean), size=flips, replace=False)):
        others = [name for name in names if name != clean[index]]
        labels[index] = _pick(rng, others)
    return labels


def generate_items(params: Params, task: str) -> list[SyntheticItem]:
    """The clean items of `task` (no planted defects), in id order, with their attributes."""
    class_names(task)  # rejects an unknown task
    rng = _rng(params, task, purpose=1)
    captions = _Captions(rng, params.synthetic.shift.caption_style)
    sizes = split_sizes(params.synthetic.items_per_task, params)
    drafts: list[tuple[str, dict]] = []
    for split in SPLITS:
        if task == "hateful_memes":
            first_set = len({d["set_id"] for _, d in drafts if d["set_id"] is not None})
            split_drafts = _hateful_split(rng, captions, params, split, sizes[split], first_set)
        else:
            split_drafts = _moderation_split(rng, captions, params, sizes[split])
        drafts.extend((split, draft) for draft in split_drafts)
    labels = _noisy_labels(params, task, [draft["clean_label"] for _, draft in drafts])
    prefix = ID_PREFIX[task]
    return [
        SyntheticItem(id=f"{prefix}-{number:06d}", task=task, split=split, label=label, **draft)
        for number, ((split, draft), label) in enumerate(zip(drafts, labels))
    ]


def plant_defects(params: Params, task: str, items: list[SyntheticItem]) -> list[PlantedDefect]:
    """Which extra rows carry a planted defect. Ids continue after the clean items.

    Duplicates keep their original's text and label; the first exact duplicate of a train item
    lands in test, to exercise the cross-split rule. Broken rows copy a clean item's text and label
    so that only the image is at fault.
    """
    settings = params.synthetic
    rng = _rng(params, task, purpose=3)
    wanted = (settings.plant_exact_duplicates + settings.plant_near_duplicates
              + settings.plant_broken)
    if wanted > len(items):
        raise ValueError(f"synthetic: {wanted} planted defects need at least as many items")
    # Distinct originals, so no clean item is the source of two defects.
    originals = [items[int(i)] for i in rng.permutation(len(items))[:wanted]]
    if settings.plant_exact_duplicates:
        train_originals = [item for item in originals if item.split == "train"]
        if train_originals:  # it leads the list: the first exact duplicate crosses splits
            originals.remove(train_originals[0])
            originals.insert(0, train_originals[0])
    number = len(items)
    defects: list[PlantedDefect] = []

    def add(kind: str, source: SyntheticItem, split: str, ext: str) -> None:
        nonlocal number
        defect_id = f"{ID_PREFIX[task]}-{number:06d}"
        number += 1
        defects.append(PlantedDefect(
            id=defect_id, kind=kind, split=split, text=source.text, label=source.label,
            source_item=source.id, source_split=source.split, img=f"img/{defect_id}.{ext}"))

    originals.reverse()  # consumed with pop() from here on
    for k in range(settings.plant_exact_duplicates):
        source = originals.pop()
        split = "test" if k == 0 and source.split == "train" else source.split
        add("exact_duplicate", source, split, source.image.fmt)
    for _ in range(settings.plant_near_duplicates):
        source = originals.pop()
        add("near_duplicate", source, source.split, "jpg")
    for k in range(settings.plant_broken):
        source = originals.pop()
        kind = PLANTED_BROKEN_KINDS[k % len(PLANTED_BROKEN_KINDS)]
        add(kind, source, source.split, "png")
    return defects


# --- files -------------------------------------------------------------------------------------
def item_groups(item: SyntheticItem) -> dict[str, str]:
    """The grouping columns a line carries (contracts.GROUPING_COLUMNS): `group`, whether the
    caption targets a group of people; hateful_memes also `confounder`, the item's role in its
    confounder set (hateful, text_confounder, image_confounder, benign)."""
    found = {"group": "targets_group" if item.group_target else "no_group_target"}
    if item.task == "hateful_memes":
        found["confounder"] = item.role
    return found


def _line(item_id: str, img: str, text: str, label: str, groups: dict[str, str]) -> str:
    return json.dumps({"id": item_id, "img": img, "label": label, "text": text, **groups},
                      sort_keys=True)


def write_task(folder: Path, params: Params, task: str) -> dict:
    """Write one task's jsonl layout and planted.json into `folder` (which must not exist)."""
    items = generate_items(params, task)
    defects = plant_defects(params, task, items)
    (folder / "img").mkdir(parents=True)
    rendered: dict[ImageSpec, bytes] = {}  # image confounders share their spec: render once
    by_id: dict[str, bytes] = {}
    groups = {item.id: item_groups(item) for item in items}  # defects carry their source's
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    for item in items:
        if item.image not in rendered:
            rendered[item.image] = encode_image(render_image(item.image), item.image.fmt)
        by_id[item.id] = rendered[item.image]
        (folder / item.img).write_bytes(by_id[item.id])
        lines[item.split].append(_line(item.id, item.img, item.text, item.label,
                                       groups[item.id]))
    for defect in defects:
        original = by_id[defect.source_item]
        if defect.kind == "exact_duplicate":
            payload: bytes | None = original
        elif defect.kind == "near_duplicate":
            payload = _near_duplicate_bytes(original)
        else:
            payload = _broken_bytes(defect.kind, original)
        if payload is not None:
            (folder / defect.img).write_bytes(payload)
        lines[defect.split].append(_line(defect.id, defect.img, defect.text, defect.label,
                                         groups[defect.source_item]))
    for split, split_lines in lines.items():
        (folder / f"{split}.jsonl").write_text("".join(f"{line}\n" for line in sorted(split_lines)))
    planted = {"task": task, "clean_items": len(items),
               "defects": [d.manifest_entry() for d in defects]}
    (folder / "planted.json").write_text(json.dumps(planted, sort_keys=True, indent=2) + "\n")
    return {"items": len(items), "planted": len(defects),
            "per_split": {split: len(split_lines) for split, split_lines in lines.items()}}


def fetch(dest: Path, params: Params) -> None:
    """Generate both tasks under `dest/<task>/`, replacing whatever was there.

    Each task is written to a sibling temp folder and moved into place, so an interrupted fetch
    never leaves a half-written task behind (and no stale file survives a re-fetch).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for task in TASK_CODES:
        final = dest / task
        partial = dest / f".{task}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_task(partial, params, task)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)


def read(root: Path, task: str) -> Iterator[RawRecord]:
    return read_layout(Path(root) / task, SOURCE, task)
