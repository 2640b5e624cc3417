"""Drift-test sides rendered in memory from the synthetic source, with its shift knobs, plus the
tiny random-init model the drift stage embeds them with."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import drift_features
from pipeline.model import build_from_model_params, save_model
from pipeline.params import Params, parse_params
from pipeline.sources import synthetic
from pipeline.stages.drift import Batch

TASK = "hateful_memes"
# Each shift the detector is measured on: synthetic params on top of the default.
SHIFTS = {
    "novel_vocabulary": {"shift": {"novel_vocabulary": True}},
    "hashtag_captions": {"shift": {"caption_style": "hashtags"}},
    "novel_shapes": {"shift": {"novel_shapes": True}},
    "larger_images": {"image_min_side": 160, "image_max_side": 320},
}


def synthetic_batch(seed: int, items: int, shift: str | None = None) -> Batch:
    """All clean items of one synthetic seed as a drift side (labels as class names)."""
    raw = {"seed": seed, "items_per_task": items, **(SHIFTS[shift] if shift else {})}
    params = parse_params({"synthetic": raw})
    generated = synthetic.generate_items(params, TASK)
    images = [synthetic.render_image(item.image) for item in generated]
    rows = pd.DataFrame([{"id": item.id, "text": item.text, "label": item.label,
                          **drift_features.image_stats(image)}
                         for item, image in zip(generated, images)])
    return Batch(rows, images, f"synthetic seed {seed}" + (f", shift {shift}" if shift else ""))


def save_tiny_model(root: Path) -> Path:
    """A random-init tiny model in root/artifacts/model, the stage's fallback when there is no
    champion. Random weights still map different words and shapes to different embeddings."""
    model = build_from_model_params(Params().model, TASK, seed=0)
    return save_model(model, Path(root) / "artifacts" / "model")
