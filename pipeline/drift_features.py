"""Per-item features the drift stage compares, as pure functions over manifest rows and images.

Drift is measured on cheap, interpretable summaries rather than raw pixels or tokens: a shift in
any of them is something a person can look at and explain (longer captions, darker images, a new
source, a different label mix, a less confident model).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

# Images are downscaled to at most this side before their pixel statistics are taken: brightness
# and colourfulness are global averages, so a thumbnail gives nearly the same value much faster.
THUMBNAIL_SIDE = 64

NUMERICAL_FEATURES = ("text_length", "word_count", "image_width", "image_height",
                      "image_aspect", "brightness", "colourfulness")
CATEGORICAL_FEATURES = ("label", "source")
PREDICTION_NUMERICAL = ("pred_confidence",)
PREDICTION_CATEGORICAL = ("pred_label",)


def text_features(text: str) -> dict[str, int]:
    return {"text_length": len(text), "word_count": len(text.split())}


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk's colourfulness of an RGB array (0 for grey, ~100+ for vivid images).

    It only looks at the opponent channels R-G and (R+G)/2-B, so adding the same amount to every
    channel (a brightness change) leaves it unchanged: the two features drift independently.
    """
    channels = rgb.astype(np.float64)
    red, green, blue = channels[..., 0], channels[..., 1], channels[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = math.hypot(float(rg.std()), float(yb.std()))
    centre = math.hypot(float(rg.mean()), float(yb.mean()))
    return spread + 0.3 * centre


def image_features(path: Path, max_side: int = THUMBNAIL_SIDE) -> dict[str, float]:
    """Size, aspect, mean brightness (0-255 luma) and colourfulness of one stored image.

    An image that cannot be read gives NaN for every feature; the caller counts those rows.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            # draft() lets the JPEG decoder skip detail we are about to throw away.
            image.draft("RGB", (max_side, max_side))
            thumb = image.convert("RGB")
            thumb.thumbnail((max_side, max_side))
            rgb = np.asarray(thumb)
    except (OSError, UnidentifiedImageError, ValueError):
        return {"image_width": math.nan, "image_height": math.nan, "image_aspect": math.nan,
                "brightness": math.nan, "colourfulness": math.nan}
    # ITU-R 601 luma, the same weights PIL uses for mode "L".
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return {"image_width": float(width), "image_height": float(height),
            "image_aspect": width / height, "brightness": float(luma.mean()),
            "colourfulness": colourfulness(rgb)}


def prediction_features(predictions: pd.DataFrame) -> pd.DataFrame:
    """`id, pred_label, pred_confidence` from a predictions frame (`prediction`, `prob_<class>`)."""
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    if "id" not in predictions.columns or "prediction" not in predictions.columns or not prob_columns:
        raise ValueError("predictions need `id`, `prediction` and `prob_<class>` columns; got "
                         f"{list(predictions.columns)}")
    return pd.DataFrame({
        "id": predictions["id"].astype(str),
        "pred_label": predictions["prediction"].astype(str),
        "pred_confidence": predictions[prob_columns].astype(float).max(axis=1),
    })


def feature_frame(manifest: pd.DataFrame, root: Path,
                  predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row of drift features per manifest row, in manifest order, keyed by `id`.

    `image_path` is relative to `root` (the project root). With `predictions`, the predicted
    class and its probability are joined by id (NaN where an item was not scored).
    """
    rows = []
    for item in manifest.itertuples(index=False):
        row = {"id": str(item.id), "label": str(item.label), "source": str(item.source)}
        row.update(text_features(str(item.text)))
        row.update(image_features(root / str(item.image_path)))
        rows.append(row)
    columns = ["id", *NUMERICAL_FEATURES, *CATEGORICAL_FEATURES]
    frame = pd.DataFrame(rows, columns=columns)
    if predictions is not None:
        frame = frame.merge(prediction_features(predictions), on="id", how="left",
                            validate="one_to_one")
    return frame
