"""The MLflow pyfunc model: a dataframe of (image, text) in, label + class probabilities out.

Input columns: `image` — base64 of the image file's bytes, or a path readable by the serving
process — and `text`. Output columns: `label` (class name), `label_index`, and one
`prob_<class name>` column per class, in the task's class order.

Registered as "model from code" (pipeline/registry.py logs this file, with the pipeline package
as code_paths), so nothing is unpickled at load time: the weights are safetensors, the config
JSON, and this file is imported.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from PIL import Image

from pipeline.monitoring import capture
from pipeline.prediction_checks import probability_column

INPUT_COLUMNS = ("image", "text")
DEFAULT_BATCH_SIZE = 64
# A string this long cannot be a path on any filesystem we serve from; skip the stat call.
MAX_PATH_CHARS = 4096


class BadInput(MlflowException):
    """One input row cannot be scored; the message names the row and why. An MlflowException
    with INVALID_PARAMETER_VALUE, so the scoring server answers 400 rather than 500."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def decode_image(value: object) -> Image.Image:
    """An RGB image from a path, raw bytes, or base64 of the image file's bytes."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str) and value:
        if len(value) < MAX_PATH_CHARS and os.path.isfile(value):
            data = Path(value).read_bytes()
        else:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput("image is neither an existing file nor base64 data") from None
    else:
        raise BadInput(f"image must be a base64 string or a path, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadInput(f"image cannot be decoded: {exc}") from None


def decode_text(value: object) -> str:
    if not isinstance(value, str):
        raise BadInput(f"text must be a string, got {type(value).__name__}")
    return value


def output_frame(probs: np.ndarray, class_names: tuple[str, ...] | list[str]) -> pd.DataFrame:
    predicted = probs.argmax(axis=1)
    frame = pd.DataFrame({"label": [class_names[i] for i in predicted],
                          "label_index": predicted.astype(np.int64)})
    for k, name in enumerate(class_names):
        frame[probability_column(name)] = probs[:, k].astype(np.float64)
    return frame


class MMGuardPyfunc(PythonModel):
    """Scores a batch of (image, text) rows with the trained MMGuardModel."""

    def load_context(self, context) -> None:
        import torch

        from pipeline.model import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(context.artifacts["model_dir"], device=device)
        self.class_names = tuple(self.model.class_names)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise BadInput(f"input is missing the columns {missing}; expected {INPUT_COLUMNS}")
        images, texts = [], []
        for row, (image, text) in enumerate(zip(model_input["image"], model_input["text"])):
            try:
                images.append(decode_image(image))
                texts.append(decode_text(text))
            except BadInput as exc:
                raise BadInput(f"row {row}: {exc.message}") from None
        batch_size = int((params or {}).get("batch_size") or DEFAULT_BATCH_SIZE)
        if not images:
            return output_frame(np.zeros((0, len(self.class_names))), self.class_names)
        probs = self.model.predict_proba(images, texts, batch_size=batch_size)
        output = output_frame(np.asarray(probs, dtype=np.float64), self.class_names)
        capture.record(context, model_input, images, texts, output)  # the monitoring log
        return output


mlflow.models.set_model(MMGuardPyfunc())
