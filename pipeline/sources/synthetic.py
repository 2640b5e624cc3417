"""The embedded synthetic source: meme-like image + caption pairs for both tasks, made offline.

`fetch` writes `dest/<task>/` in the jsonl layout (img/ + train/val/test.jsonl) plus `planted.json`,
the manifest of defects planted on purpose so later stages can be tested against them. Every byte
follows from `params.synthetic.seed`: seeded numpy generators only, fixed encoder settings, sorted
JSON, no time stamps, no `hash()`; `data.dvc` relies on that.

How labels arise (the point of the data is that no single modality suffices):

hateful_memes — image attribute a (subject is a "hostile symbol": spiked star, X cross or bolt,
versus a neutral circle, square or heart) and text attribute b (caption targets a fictional group of
people versus an object). hateful = a AND b. Items come in confounder sets as in Hateful Memes: a
hateful item, a text confounder (same caption, neutral image → benign) and an image confounder
(same image, object caption → benign); three sets in four have both confounders, which gives about
40/30/30 and an ideal unimodal model about 0.75 AUROC. `benign_fraction` adds plain (0, 0) items.

moderation7 — a red/green/blue circle/square/triangle on a muted scene, and a caption:
  True/Neutral         caption names the drawn colour and shape (the only faithful description)
  Satire/Parody        satirical framing words around the drawn colour and shape
  Misleading Content   caption names a wrong colour
  Imposter Content     caption claims a fake official source; a fake badge sits in the image
  False Connection     caption names a wrong shape
  Manipulated Content  a checkerboard glitch block in the image; caption insists it is unedited
  Hate                 a hostile symbol in the image and a caption targeting a group

The banner rendered into each image shows the scene phrase only, never label-deciding words, so an
OCR-capable image model cannot read the text modality off the picture.
"""
from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.params import Params
from pipeline.paths import SPLITS
from pipeline.sources.base import RawRecord
from pipeline.sources.jsonl_layout import read_layout
from pipeline.taxonomy import class_names

SOURCE = "synthetic"
TASK_CODES = {"hateful_memes": 0, "moderation7": 1}  # stable seed salts (never hash())
ID_PREFIX = {"hateful_memes": "hm", "moderation7": "m7"}

# Fixed encoder settings: part of the byte-for-byte contract.
PNG_OPTIONS = {"compress_level": 6, "optimize": False}
JPEG_OPTIONS = {"quality": 90, "subsampling": 0, "optimize": False, "progressive": False}
NEAR_DUPLICATE_JPEG_QUALITY = 80

# --- visual vocabulary -------------------------------------------------------------------------
# Bold, saturated subject colours; backgrounds below stay muted so a 64 px model can read them.
M7_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30), "green": (30, 165, 45), "blue": (35, 65, 215),
}
HM_COLOURS: dict[str, tuple[int, int, int]] = {
    **M7_COLOURS, "orange": (240, 130, 20), "purple": (135, 40, 175),
}
M7_SHAPES = ("circle", "square", "triangle")
HOSTILE_SHAPES = ("spiked star", "x cross", "bolt")
NEUTRAL_SHAPES = ("circle", "square", "heart")
# The `novel_shapes` shift draws these instead, at the same colours, sizes and positions; the
# tuples keep the length of the ones they replace so the random draws stay in step.
NOVEL_HOSTILE_SHAPES = ("diamond", "hexagon", "arrow")
NOVEL_NEUTRAL_SHAPES = ("triangle", "diamond", "hexagon")

# (phrase, sky colour, ground colour, decoration)
SCENES: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int], str], ...] = (
    ("at the beach", (196, 214, 226), (226, 212, 176), "waves"),
    ("in the office", (214, 212, 204), (176, 170, 160), "tiles"),
    ("at the park", (204, 220, 214), (186, 198, 172), "none"),
    ("on the bus", (210, 206, 196), (150, 150, 156), "tiles"),
    ("at the mall", (226, 220, 214), (196, 186, 180), "buildings"),
    ("in the kitchen", (232, 226, 210), (200, 184, 160), "tiles"),
    ("at the stadium", (190, 202, 214), (170, 186, 168), "waves"),
    ("in the library", (214, 202, 186), (168, 150, 130), "buildings"),
    ("at the airport", (206, 214, 222), (174, 174, 178), "none"),
    ("in the garden", (212, 222, 208), (176, 164, 140), "waves"),
    ("at school", (222, 216, 200), (190, 178, 162), "buildings"),
    ("downtown", (200, 200, 206), (160, 158, 162), "buildings"),
)
BANNER_PREFIXES = ("", "meanwhile", "live", "greetings", "just another day", "scenes")

# --- caption vocabulary ------------------------------------------------------------------------
# Fictional, harmless-sounding groups of people versus everyday objects (plural, so that grammar
# does not tell them apart).
GROUPS = ("the Glorpians", "the Velmari", "the Quenbury folk", "the Zarnish", "the Plimmers",
          "the Oskelites", "the Brindlefolk", "the Tovari", "the Murrowites", "the Dellish")
OBJECTS = ("toasters", "office printers", "wifi routers", "sandwiches", "alarm clocks",
           "vending machines", "parking meters", "umbrellas", "leaf blowers", "shopping carts")
# The `novel_vocabulary` shift: the same number of other groups and objects.
NOVEL_GROUPS = ("the Krellans", "the Yubbish", "the Farrowkin", "the Noxari", "the Stibbles",
                "the Vantrians", "the Gorrum folk", "the Helvish", "the Orbanites", "the Pellow")
NOVEL_OBJECTS = ("kettles", "garden hoses", "ceiling fans", "microwaves", "staplers",
                 "traffic cones", "door bells", "lawn mowers", "hair dryers", "ticket machines")
TARGET_TEMPLATES = (
    "{target} be like {scene}",
    "when {target} show up {scene}",
    "nobody invited {target} {scene}",
    "me trying to explain memes to {target} {scene}",
    "{target} every single day {scene}",
    "look what {target} did {scene}",
    "why are {target} always {scene}",
    "{target} ruin everything {scene}",
    "can't escape {target} even {scene}",
    "{target} again. {scene}. unbelievable",
)
FAITHFUL_TEMPLATES = (
    "a {colour} {shape} {scene}",
    "photo of a {colour} {shape} {scene}",
    "spotted a {colour} {shape} {scene} {when}",
    "here is a {colour} {shape} {scene}",
    "this {colour} {shape} was seen {scene} {when}",
    "my {colour} {shape} {scene} {when}",
)
SATIRE_TEMPLATES = (
    "satire: {colour} {shape} elected mayor {scene} {when}",
    "parody news: local {colour} {shape} demands a raise {scene}",
    "in satirical news, a {colour} {shape} wins gold {scene} {when}",
    "totally serious report (parody): {colour} {shape} refuses to leave {scene}",
)
IMPOSTER_TEMPLATES = (
    "official statement from the Ministry of Shapes: a {colour} {shape} {scene} {when}",
    "verified notice by the National Geometry Bureau: {colour} {shape} {scene}",
    "press release from the Department of Colours: a {colour} {shape} {scene} {when}",
)
MANIPULATED_TEMPLATES = (
    "unedited original photo of a {colour} {shape} {scene} {when}",
    "100% untouched picture: a {colour} {shape} {scene}",
    "raw camera file, no edits: {colour} {shape} {scene} {when}",
)
WHEN = ("today", "yesterday", "this morning", "last night", "on monday", "again", "at noon",
        "this weekend", "earlier", "right now")
# Words whose presence marks a framed (non-faithful) caption; tests check True/Neutral has none.
FRAMING_MARKERS = {
    "Satire/Parody": ("satire", "parody", "satirical"),
    "Imposter Content": ("official", "verified", "press release"),
    "Manipulated Content": ("unedited", "untouched", "no edits"),
}

PLANTED_BROKEN_KINDS = ("truncated_png", "zero_byte", "not_an_image", "missing_image")


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image; rendering is a pure function of it."""

    width: int
    height: int
    fmt: str                     # "png" or "jpg"
    scene: str                   # scene phrase, also written in the banner
    banner: str
    shape: str                   # the drawn subject
    colour: str
    rgb: tuple[int, int, int]    # the colour after jitter
    cx: int
    cy: int
    radius: int
    rotation: int                # degrees
    texture_seed: int
    glitch: bool = False         # moderation7 Manipulated Content
    badge: bool = False          # moderation7 Imposter Content


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


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


class _Captions:
    """Draws captions, avoiding exact repeats so that only designed pairs share a caption (a
    repeated caption next to a similar image would be a near duplicate by accident)."""

    def __init__(self, rng: np.random.Generator, style: str = "plain"):
        self.rng = rng
        self.style = style
        self.used: set[str] = set()

    def draw(self, templates, **choices) -> str:
        caption = ""
        for _ in range(30):
            values = {key: _pick(self.rng, options) for key, options in choices.items()}
            caption = _pick(self.rng, templates).format(**values)
            caption = " ".join(caption.split())
            if self.style == "hashtags":  # another caption style (a shift knob)
                caption = " ".join(f"#{word}" for word in caption.split())
            if caption not in self.used:
                break
        self.used.add(caption)  # after 30 tries the vocabulary is exhausted: accept a repeat
        return caption


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


@dataclass(frozen=True)
class _Vocabulary:
    """The shapes and caption targets items are drawn from; the shift knobs swap them."""

    hostile_shapes: tuple[str, ...]
    neutral_shapes: tuple[str, ...]
    groups: tuple[str, ...]
    objects: tuple[str, ...]


def _vocabulary(params: Params) -> _Vocabulary:
    shift = params.synthetic.shift
    return _Vocabulary(
        hostile_shapes=NOVEL_HOSTILE_SHAPES if shift.novel_shapes else HOSTILE_SHAPES,
        neutral_shapes=NOVEL_NEUTRAL_SHAPES if shift.novel_shapes else NEUTRAL_SHAPES,
        groups=NOVEL_GROUPS if shift.novel_vocabulary else GROUPS,
        objects=NOVEL_OBJECTS if shift.novel_vocabulary else OBJECTS)


def _scene_words() -> tuple[str, ...]:
    return tuple(scene[0] for scene in SCENES)


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


# --- rendering ---------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float,
             degrees: float) -> list[tuple[float, float]]:
    """Vertices of a subject shape around (cx, cy), radius r, rotated."""
    if shape == "square":
        points = [(np.cos(a), np.sin(a)) for a in np.radians([45, 135, 225, 315])]
        points = [(1.1 * x, 1.1 * y) for x, y in points]
    elif shape == "triangle":
        points = [(1.2 * np.cos(a), 1.2 * np.sin(a)) for a in np.radians([-90, 30, 150])]
    elif shape == "spiked star":
        angles = np.radians(np.arange(24) * 15 - 90)
        points = [(rad * np.cos(a), rad * np.sin(a))
                  for a, rad in zip(angles, [1.15, 0.5] * 12)]
    elif shape == "x cross":
        points = _x_cross_outline(0.3)
        degrees += 45
    elif shape == "bolt":
        points = [(-0.25, -1.1), (0.5, -1.1), (0.15, -0.2), (0.6, -0.2), (-0.4, 1.15),
                  (-0.05, 0.15), (-0.5, 0.15)]
    elif shape == "diamond":
        points = [(0.0, -1.2), (0.85, 0.0), (0.0, 1.2), (-0.85, 0.0)]
    elif shape == "hexagon":
        points = [(1.05 * np.cos(a), 1.05 * np.sin(a)) for a in np.radians(np.arange(6) * 60)]
    elif shape == "arrow":
        points = [(0.0, -1.15), (0.9, -0.1), (0.35, -0.1), (0.35, 1.1), (-0.35, 1.1),
                  (-0.35, -0.1), (-0.9, -0.1)]
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        xs = 16 * np.sin(t) ** 3 / 15
        ys = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 15
        points = list(zip(xs, ys + 0.1))
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    a = np.radians(degrees)
    cos, sin = np.cos(a), np.sin(a)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def _x_cross_outline(w: float) -> list[tuple[float, float]]:
    # A plus sign traced clockwise; rotated 45 degrees by the caller it becomes an X.
    return [(-w, -1.1), (w, -1.1), (w, -w), (1.1, -w), (1.1, w), (w, w), (w, 1.1), (-w, 1.1),
            (-w, w), (-1.1, w), (-1.1, -w), (-w, -w)]


def _background(spec: ImageSpec) -> np.ndarray:
    _, sky, ground, decoration = next(s for s in SCENES if s[0] == spec.scene)
    h, w = spec.height, spec.width
    rng = np.random.default_rng(spec.texture_seed)
    horizon = int(h * rng.uniform(0.55, 0.75))
    rows = np.linspace(0.0, 1.0, h)[:, None, None]
    sky_arr, ground_arr = np.array(sky, float), np.array(ground, float)
    image = np.where(np.arange(h)[:, None, None] < horizon,
                     sky_arr * (1.08 - 0.16 * rows), ground_arr * (1.05 - 0.1 * rows))
    image = np.broadcast_to(image, (h, w, 3)).copy()
    if decoration == "buildings":
        x = 0
        while x < w:
            bw, bh = int(rng.integers(w // 10, w // 4)), int(rng.integers(h // 10, h // 3))
            image[max(0, horizon - bh):horizon, x:x + bw] *= rng.uniform(0.82, 0.95)
            x += bw + int(rng.integers(2, 8))
    elif decoration == "waves":
        ys = np.arange(h)[:, None]
        xs = np.arange(w)[None, :]
        band = np.sin(xs / max(4, w / 12) + ys / 3.0) > 0.6
        image[horizon:][band[horizon:]] *= 0.93
    elif decoration == "tiles":
        step = max(6, w // 8)
        image[horizon:, ::step] *= 0.85
        image[horizon::max(4, step // 2), :] *= 0.85
    # Coarse paper-like grain: 3x3-pixel cells keep PNGs small while still varying every image.
    grain = rng.normal(0.0, 5.0, size=(-(-h // 3), -(-w // 3), 1))
    image += np.repeat(np.repeat(grain, 3, axis=0), 3, axis=1)[:h, :w]
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_subject(canvas: Image.Image, spec: ImageSpec) -> Image.Image:
    # Drawn at twice the size in a box around the subject and shrunk, for smooth edges.
    scale = 2
    half = int(spec.radius * 1.35) + 2
    box = 2 * half * scale
    layer = Image.new("RGBA", (box, box), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    c, r = box / 2, spec.radius * scale
    outline = max(2, r // 10)
    if spec.shape == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=spec.rgb + (255,),
                     outline=(20, 20, 20, 255), width=outline)
    else:
        draw.polygon(_polygon(spec.shape, c, c, r, spec.rotation), fill=spec.rgb + (255,),
                     outline=(20, 20, 20, 255), width=outline)
    layer = layer.resize((2 * half, 2 * half), Image.Resampling.BOX)
    canvas.paste(layer, (spec.cx - half, spec.cy - half), layer)
    return canvas


def _corner_away_from_subject(spec: ImageSpec, size: int) -> tuple[int, int]:
    # A bottom corner of the central square (kept by a centre crop), on the side away from the
    # subject so that the subject stays readable.
    short = min(spec.width, spec.height)
    x0, y0 = (spec.width - short) // 2, (spec.height - short) // 2
    x = x0 + 2 if spec.cx > spec.width / 2 else x0 + short - size - 2
    return x, y0 + short - size - 2


def _draw_glitch(image: Image.Image, spec: ImageSpec) -> Image.Image:
    size = int(min(spec.width, spec.height) * 0.36)
    x0, y0 = _corner_away_from_subject(spec, size)
    cell = max(3, size // 6)
    draw = ImageDraw.Draw(image)
    for row in range(0, size, cell):
        for col in range(0, size, cell):
            dark = (row // cell + col // cell) % 2 == 0
            draw.rectangle((x0 + col, y0 + row, x0 + min(col + cell, size) - 1,
                            y0 + min(row + cell, size) - 1),
                           fill=(10, 10, 10) if dark else (250, 250, 250))
    # Two bands of rows slid sideways, as a corrupted edit would leave.
    pixels = np.asarray(image).copy()
    rng = np.random.default_rng(spec.texture_seed + 1)
    for _ in range(2):
        top = int(rng.integers(0, spec.height - 4))
        band = max(2, spec.height // 14)
        pixels[top:top + band] = np.roll(pixels[top:top + band], spec.width // 6, axis=1)
    return Image.fromarray(pixels)


def _draw_badge(image: Image.Image, spec: ImageSpec) -> Image.Image:
    size = int(min(spec.width, spec.height) * 0.3)
    x0, y0 = _corner_away_from_subject(spec, size)
    shield = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size * 0.55), (x0 + size / 2, y0 + size),
              (x0, y0 + size * 0.55)]
    draw = ImageDraw.Draw(image)
    draw.polygon(shield, fill=(238, 192, 36), outline=(60, 40, 10), width=max(1, size // 12))
    check = [(x0 + size * 0.22, y0 + size * 0.42), (x0 + size * 0.43, y0 + size * 0.64),
             (x0 + size * 0.8, y0 + size * 0.2)]
    draw.line(check, fill=(255, 255, 255), width=max(2, size // 8))
    return image


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _banner_lines(text: str) -> list[str]:
    """The banner on one line, or on two balanced lines when it is long."""
    words = text.split()
    if len(words) < 3:
        return [text]
    cut = min(range(1, len(words)),
              key=lambda k: abs(len(" ".join(words[:k])) - len(" ".join(words[k:]))))
    return [" ".join(words[:cut]), " ".join(words[cut:])]


def _fitting_size(draw: ImageDraw.ImageDraw, line: str, size: int, width: int) -> int:
    # Text length grows about linearly with the font size.
    length = max(1.0, draw.textlength(line, font=_font(size)))
    return max(8, min(size, int(size * width * 0.94 / length)))


def _draw_banner(image: Image.Image, spec: ImageSpec) -> Image.Image:
    draw = ImageDraw.Draw(image)
    size = max(9, spec.height // 9)
    lines = [spec.banner]
    if _fitting_size(draw, spec.banner, size, spec.width) < 0.75 * size:
        lines = _banner_lines(spec.banner)
    size = min(_fitting_size(draw, line, size, spec.width) for line in lines)
    font = _font(size)
    y = max(2, spec.height // 40)
    for line in lines:
        width = draw.textlength(line, font=font)
        draw.text(((spec.width - width) / 2, y), line, font=font, fill=(255, 255, 255),
                  stroke_width=max(1, size // 7), stroke_fill=(0, 0, 0))
        y += int(size * 1.1)
    return image


def render_image(spec: ImageSpec) -> Image.Image:
    image = Image.fromarray(_background(spec))
    image = _draw_subject(image, spec)
    if spec.badge:
        image = _draw_badge(image, spec)
    if spec.glitch:
        image = _draw_glitch(image, spec)
    return _draw_banner(image, spec)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", **PNG_OPTIONS)
    elif fmt == "jpg":
        image.save(buffer, format="JPEG", **JPEG_OPTIONS)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buffer.getvalue()


def _near_duplicate_bytes(original: bytes) -> bytes:
    # Slightly smaller and recompressed: different bytes, same picture to a perceptual hash.
    image = Image.open(io.BytesIO(original)).convert("RGB")
    shrunk = image.resize((max(16, round(image.width * 0.94)), max(16, round(image.height * 0.94))),
                          Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    shrunk.save(buffer, format="JPEG", **{**JPEG_OPTIONS, "quality": NEAR_DUPLICATE_JPEG_QUALITY})
    return buffer.getvalue()


def _broken_bytes(kind: str, original: bytes) -> bytes | None:
    if kind == "truncated_png":
        png = encode_image(Image.open(io.BytesIO(original)).convert("RGB"), "png")
        return png[: len(png) // 2]
    if kind == "zero_byte":
        return b""
    if kind == "not_an_image":
        return b"this is a text file that only pretends to be a PNG image\n"
    if kind == "missing_image":
        return None  # the line points at a file that is never written
    raise ValueError(f"unknown broken kind {kind!r}")


# --- files -------------------------------------------------------------------------------------
def _line(item_id: str, img: str, text: str, label: str) -> str:
    return json.dumps({"id": item_id, "img": img, "label": label, "text": text}, sort_keys=True)


def write_task(folder: Path, params: Params, task: str) -> dict:
    """Write one task's jsonl layout and planted.json into `folder` (which must not exist)."""
    items = generate_items(params, task)
    defects = plant_defects(params, task, items)
    (folder / "img").mkdir(parents=True)
    rendered: dict[ImageSpec, bytes] = {}  # image confounders share their spec: render once
    by_id: dict[str, bytes] = {}
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    for item in items:
        if item.image not in rendered:
            rendered[item.image] = encode_image(render_image(item.image), item.image.fmt)
        by_id[item.id] = rendered[item.image]
        (folder / item.img).write_bytes(by_id[item.id])
        lines[item.split].append(_line(item.id, item.img, item.text, item.label))
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
        lines[defect.split].append(_line(defect.id, defect.img, defect.text, defect.label))
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
