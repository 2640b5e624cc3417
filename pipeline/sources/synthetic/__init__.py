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

# Split along its seams: vocabulary (words), render (pixels/bytes), generate (items, files).
from .generate import (PLANTED_BROKEN_KINDS, SOURCE, TASK_CODES, SyntheticItem, fetch,
                       generate_items, plant_defects, read, write_task)
from .render import render_image
from .vocabulary import (FRAMING_MARKERS, GROUPS, HM_COLOURS, HOSTILE_SHAPES, M7_COLOURS,
                         M7_SHAPES, NEUTRAL_SHAPES, NOVEL_HOSTILE_SHAPES, NOVEL_NEUTRAL_SHAPES,
                         OBJECTS)

__all__ = ["FRAMING_MARKERS", "GROUPS", "HM_COLOURS", "HOSTILE_SHAPES", "M7_COLOURS", "M7_SHAPES",
           "NEUTRAL_SHAPES", "NOVEL_HOSTILE_SHAPES", "NOVEL_NEUTRAL_SHAPES", "OBJECTS",
           "PLANTED_BROKEN_KINDS", "SOURCE", "TASK_CODES", "SyntheticItem", "fetch",
           "generate_items", "plant_defects", "read", "render_image", "write_task"]
