"""Batch inference: a jsonl or parquet file of (image, text) rows through a registered model.

Input rows need `image` (a path relative to the images folder, or base64 bytes; `img` and
`image_path` are accepted as the column name too) and `text`; `id` is kept when present. Every
input row comes out exactly once: with its label and probabilities, or with an `error` saying why
it could not be scored. A bad row never stops the run; a batch that fails is re-scored row by row
so only the bad rows lose their predictions.

Paths are resolved here, never by the model: each must be a regular file inside the images
folder the caller names (by default the input file's folder), read with ingest's confinement and
size rules (pipeline/images.read_confined), and its bytes go to the model as base64.

The model follows its alias while the file is scored, as a served one does (pipeline/hot_swap.py):
`models:/name@alias` follows that alias, any other URI `serving.follow_alias` of the params
(null pins the loaded version); each output row's `model_version` names the version that scored
it. `serving.shadow` scores every batch with that alias too, into the capture log only.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline import atomic, images

IMAGE_COLUMNS = ("image", "img", "image_path")
MAX_PATH_CHARS = 4096
# Base64 of the smallest real image file is longer than this; a shorter string is a path.
MIN_INLINE_BYTES = 64
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[A-Za-z0-9_-]+)/?$")


class PredictError(ValueError):
    """The input file as a whole cannot be read (missing, unknown format, no image column)."""


def read_rows(path: Path) -> pd.DataFrame:
    """The input as a frame of `row, id, image, text, error` (error set on unreadable lines)."""
    if not path.exists():
        raise PredictError(f"{path} not found")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        frame["error"] = None
    elif path.suffix in (".jsonl", ".json"):
        records = []
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line.decode("utf-8"))
                    if not isinstance(item, dict):
                        raise ValueError(f"expected an object, got {type(item).__name__}")
                    records.append({**item, "error": None})
                except (UnicodeDecodeError, ValueError) as exc:
                    records.append({"error": f"malformed_line {number}: {exc}"})
        frame = pd.DataFrame.from_records(records)
    else:
        raise PredictError(f"{path}: expected a .jsonl or .parquet file")
    image_column = next((c for c in IMAGE_COLUMNS if c in frame.columns), None)
    if image_column is None and not frame.empty and frame["error"].isna().any():
        raise PredictError(f"{path}: no image column (one of {IMAGE_COLUMNS})")
    out = pd.DataFrame({"row": range(len(frame)),
                        "id": frame["id"] if "id" in frame else None,
                        "image": frame[image_column] if image_column else None,
                        "text": frame["text"] if "text" in frame else None,
                        "error": frame["error"]})
    return out


def _is_inline(value: str) -> bool:
    """Base64 image data rather than a path: valid base64 of at least MIN_INLINE_BYTES bytes
    (paths almost always hold a `.`, which base64 never does)."""
    if len(value) >= MAX_PATH_CHARS:
        return True
    try:
        return len(base64.b64decode(value, validate=True)) >= MIN_INLINE_BYTES
    except (binascii.Error, ValueError):
        return False


def load_image(value: object, folder: Path, max_bytes: int) -> object:
    """A path becomes base64 of the file it names inside `folder`; anything else goes to the
    model as it is (which checks it). ImageRejected when the path is not such a file."""
    if not isinstance(value, str) or not value or _is_inline(value):
        return value
    data = images.read_confined(folder / value, folder, max_bytes, shown=value)
    return base64.b64encode(data).decode("ascii")


def _row_problem(image: object, text: object) -> str | None:
    if not isinstance(image, str) or not image:
        return "missing_image: no image path or data"
    if not isinstance(text, str):
        return "missing_text: text is not a string"
    return None


def _score(model, rows: pd.DataFrame, batch_size: int) -> tuple[pd.DataFrame | None, dict]:
    """Predictions for `rows` (None when the batch failed) and per-row errors on a fallback."""
    try:
        return model.predict(rows[["image", "text"]].reset_index(drop=True),
                             params={"batch_size": batch_size}), {}
    except Exception:  # noqa: BLE001 - one bad row; find it by scoring rows one at a time
        pass
    outputs, errors = [], {}
    for index in rows.index:
        try:
            outputs.append(model.predict(rows.loc[[index], ["image", "text"]]
                                         .reset_index(drop=True)).assign(_index=index))
        except Exception as exc:  # noqa: BLE001 - reported per row, never fatal
            errors[index] = f"bad_row: {str(exc).splitlines()[0][:300]}"
    scored = pd.concat(outputs, ignore_index=True) if outputs else None
    return scored, errors


def _load_images(rows: pd.DataFrame, folder: Path, max_bytes: int) -> pd.Series:
    """The model's image input per row; a row whose path cannot be read gets its error."""
    loaded = pd.Series(None, index=rows.index, dtype=object)
    for index in rows.index[rows["error"].isna()]:
        try:
            loaded[index] = load_image(rows.at[index, "image"], folder, max_bytes)
        except images.ImageRejected as exc:
            rows.loc[index, "error"] = f"{exc.reason}: {exc.detail}"
    return loaded


def serving_overrides(params, model_uri: str) -> dict:
    """The load-time model config for `model_uri`: follow the URI's alias (else
    serving.follow_alias) and shadow as params say; the version's own limits stay."""
    from pipeline import serving

    match = ALIAS_URI.match(model_uri)
    if match and params.serving.follow_alias is not None:  # null pins any URI
        return {"follow": serving.follow_config(params, match["alias"], match["name"])}
    return {"follow": serving.follow_config(params)}


def predict_file(model_uri: str, input_path: Path, output_path: Path, images_dir: Path,
                 max_image_bytes: int, batch_size: int = 64,
                 model_config: dict | None = None) -> dict:
    """Score every row of `input_path` with `model_uri`; write `output_path` (.parquet/.jsonl).
    Image paths must name files inside `images_dir`. `model_config`: load-time overrides of the
    logged model's config (`serving_overrides`)."""
    import mlflow

    if output_path.suffix not in (".parquet", ".jsonl"):
        raise PredictError(f"{output_path}: expected a .parquet or .jsonl output file")
    if not images_dir.is_dir():
        raise PredictError(f"images folder {images_dir} is not a folder")
    rows = read_rows(input_path)
    for index in rows.index[rows["error"].isna()]:
        rows.loc[index, "error"] = _row_problem(rows.at[index, "image"], rows.at[index, "text"])

    model = mlflow.pyfunc.load_model(model_uri, model_config=model_config)
    results = []
    ready = rows[rows["error"].isna()]
    with tqdm(total=len(rows), desc="predict", unit="row") as progress:
        progress.update(len(rows) - len(ready))
        for start in range(0, len(ready), batch_size):
            chunk = ready.iloc[start:start + batch_size].copy()
            progress.update(len(chunk))
            # Read per chunk: a million-row file never holds every image in memory at once.
            chunk["image"] = _load_images(chunk, images_dir, max_image_bytes)
            rows.loc[chunk.index, "error"] = chunk["error"]
            chunk = chunk[chunk["error"].isna()]
            if chunk.empty:
                continue
            scored, errors = _score(model, chunk, batch_size)
            for index, message in errors.items():
                rows.loc[index, "error"] = message
            if scored is not None:
                if "_index" in scored:
                    scored = scored.set_index("_index")
                else:
                    scored.index = chunk.index
                results.append(scored)

    predictions = pd.concat(results) if results else pd.DataFrame()
    output = rows.join(predictions, how="left")
    output["image"] = output["image"].map(
        lambda v: v if isinstance(v, str) and not _is_inline(v) else "<inline data>")
    if output_path.suffix == ".parquet":
        atomic.write_with(output_path, lambda tmp: output.to_parquet(tmp, index=False))
    else:
        atomic.write_with(output_path, lambda tmp: output.to_json(
            tmp, orient="records", lines=True, force_ascii=False))
    bad = output[output["error"].notna()]
    summary = {"rows": len(output), "scored": int(len(output) - len(bad)), "bad": int(len(bad)),
               "output": str(output_path)}
    if len(bad):
        summary["bad_rows"] = bad[["row", "error"]].head(20).to_dict(orient="records")
    return summary
