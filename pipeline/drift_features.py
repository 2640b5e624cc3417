"""Per-item features the drift stage compares, as pure functions over images, captions and
model outputs.

Three families, measured side by side:
- scalar features a person can look at and explain: image size, aspect, brightness and
  colourfulness (computed here) and caption descriptors (computed by Evidently from the caption,
  declared as a text column; only descriptors that need no downloaded NLTK data);
- the monitored model's image and text embeddings (what the model sees: a new subject or a new
  vocabulary moves them while sizes, colours and lengths stay put);
- the model's predicted class and confidence, and the labels where they are present.
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

IMAGE_FEATURES = ("image_width", "image_height", "image_aspect", "brightness", "colourfulness")
# Evidently descriptor columns of the caption (see text_descriptors); all work offline.
TEXT_DESCRIPTORS = ("text_length", "word_count", "non_letter_share")
PREDICTION_NUMERICAL = ("pred_confidence",)
PREDICTION_CATEGORICAL = ("pred_label",)
LABEL = "label"
MODALITIES = ("image", "text")


def load_image(path: Path) -> Image.Image | None:
    """The stored image as RGB, or None when it cannot be read (the caller counts those)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


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


def image_stats(image: Image.Image, max_side: int = THUMBNAIL_SIDE) -> dict[str, float]:
    """Size, aspect, mean brightness (0-255 luma) and colourfulness of one RGB image."""
    width, height = image.size
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side))
    rgb = np.asarray(thumb.convert("RGB"))
    # ITU-R 601 luma, the same weights PIL uses for mode "L".
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return {"image_width": float(width), "image_height": float(height),
            "image_aspect": width / height, "brightness": float(luma.mean()),
            "colourfulness": colourfulness(rgb)}


def image_features(path: Path) -> dict[str, float]:
    """image_stats of a stored image; NaN for every feature when it cannot be read."""
    image = load_image(path)
    if image is None:
        return {name: math.nan for name in IMAGE_FEATURES}
    return image_stats(image)


def text_descriptors() -> list:
    """Evidently's caption descriptors, named as in TEXT_DESCRIPTORS. Sentiment and OOV are left
    out on purpose: they download NLTK data, which a monitoring job must not depend on."""
    from evidently.descriptors import NonLetterCharacterPercentage, TextLength, WordCount

    return [TextLength("text", alias="text_length"), WordCount("text", alias="word_count"),
            NonLetterCharacterPercentage("text", alias="non_letter_share")]


def embedding_columns(modality: str, dim: int) -> list[str]:
    return [f"{modality}_emb_{k}" for k in range(dim)]


def model_features(probs: np.ndarray, image_emb: np.ndarray, text_emb: np.ndarray,
                   class_names: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Predicted class name, its probability and both embeddings, one row per item."""
    frame = pd.DataFrame({"pred_label": [class_names[i] for i in probs.argmax(axis=1)],
                          "pred_confidence": probs.max(axis=1).astype(float)})
    embeddings = [pd.DataFrame(matrix, columns=embedding_columns(modality, matrix.shape[1]))
                  for modality, matrix in zip(MODALITIES, (image_emb, text_emb))]
    return pd.concat([frame, *embeddings], axis=1)
