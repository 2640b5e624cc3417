"""The synthetic source's words: subject colours and shapes, scenes, caption templates and
the vocabularies the shift knobs swap in; plus the caption drawer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.params import Params

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
