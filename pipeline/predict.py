"""Batch inference: a jsonl or parquet file of (image, text) rows through a registered model.

Input rows need `image` (a path, relative paths taken from the input file's folder, or base64
bytes; `img` and `image_path` are accepted as the column name too) and `text`; `id` is kept when
present. Every input row comes out exactly once: with its label and probabilities, or with an
`error` saying why it could not be scored. A bad row never stops the run; a batch that fails is
re-scored row by row so only the bad rows lose their predictions.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm import tqdm

IMAGE_COLUMNS = ("image", "img", "image_path")


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


def _resolve_image(value: object, base: Path) -> object:
    """Relative paths are relative to the input file; anything else goes to the model as is."""
    if isinstance(value, str) and value and len(value) < 4096:
        candidate = base / value
        if not Path(value).is_absolute() and candidate.is_file():
            return str(candidate)
    return value


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


def predict_file(model_uri: str, input_path: Path, output_path: Path,
                 batch_size: int = 64) -> dict:
    """Score every row of `input_path` with `model_uri`; write `output_path` (.parquet/.jsonl)."""
    import mlflow

    if output_path.suffix not in (".parquet", ".jsonl"):
        raise PredictError(f"{output_path}: expected a .parquet or .jsonl output file")
    rows = read_rows(input_path)
    base = input_path.resolve().parent
    rows["image"] = [_resolve_image(v, base) for v in rows["image"]]
    for index in rows.index[rows["error"].isna()]:
        rows.loc[index, "error"] = _row_problem(rows.at[index, "image"], rows.at[index, "text"])

    model = mlflow.pyfunc.load_model(model_uri)
    results = []
    ready = rows[rows["error"].isna()]
    with tqdm(total=len(rows), desc="predict", unit="row") as progress:
        progress.update(len(rows) - len(ready))
        for start in range(0, len(ready), batch_size):
            chunk = ready.iloc[start:start + batch_size]
            scored, errors = _score(model, chunk, batch_size)
            for index, message in errors.items():
                rows.loc[index, "error"] = message
            if scored is not None:
                if "_index" in scored:
                    scored = scored.set_index("_index")
                else:
                    scored.index = chunk.index
                results.append(scored)
            progress.update(len(chunk))

    predictions = pd.concat(results) if results else pd.DataFrame()
    output = rows.join(predictions, how="left")
    output["image"] = output["image"].map(
        lambda v: v if isinstance(v, str) and len(v) < 4096 else "<inline data>")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.suffix == ".parquet":
        output.to_parquet(output_path, index=False)
    else:
        output.to_json(output_path, orient="records", lines=True, force_ascii=False)
    bad = output[output["error"].notna()]
    summary = {"rows": len(output), "scored": int(len(output) - len(bad)), "bad": int(len(bad)),
               "output": str(output_path)}
    if len(bad):
        summary["bad_rows"] = bad[["row", "error"]].head(20).to_dict(orient="records")
    return summary
