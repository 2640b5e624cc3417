"""Planted inputs of the review loop: capture-log rows in the writer's own layout and schema,
and Label Studio exports shaped field for field like the ones Label Studio 1.23 writes (the
slow tier's real server, tests/review/test_label_studio_server.py, checks the importer against
a live export)."""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CLASSES = ("not_hateful", "hateful")
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)


def jpeg(seed: int, side: int = 32) -> bytes:
    """A real JPEG whose pixels depend on `seed`."""
    image = Image.new("RGB", (side, side), ((seed * 37) % 256, (seed * 91) % 256, seed % 7 * 30))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def row(n: int, p_hateful: float, *, image: int | None = None, text: str | None = None,
        role: str = "served", score_id: str | None = "auto", version: str = "3",
        minutes_ago: float = 60, classes=CLASSES) -> dict:
    """One captured row; `image` picks the image (default: its own), `p_hateful` the positive
    class's probability (seven classes: pass a dict of probabilities instead)."""
    image = n if image is None else image
    thumb = jpeg(image)
    probs = p_hateful if isinstance(p_hateful, dict) else \
        {classes[0]: 1 - p_hateful, classes[1]: p_hateful}
    top = max(probs, key=probs.get)
    return {"time": pd.Timestamp(NOW - timedelta(minutes=minutes_ago)),
            "model_name": "mmguard-hateful_memes", "model_version": version, "model_run_id": "r",
            "role": role, "score_id": f"req{n}:0" if score_id == "auto" else score_id,
            "image_sha256": hashlib.sha256(b"original-%d" % image).hexdigest(),
            "thumbnail": thumb, "text": text if text is not None else f"caption {n}",
            "width": 32, "height": 32, "prediction": top, "confidence": float(probs[top]),
            "probabilities": json.dumps(probs)}


def write_log(log: Path, rows: list[dict], part: str = "part-000000000000-1-1") -> Path:
    """The rows as one part file of the capture log, in the folder of their first row's day."""
    frame = pd.DataFrame(rows)
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    folder = log / f"date={frame['time'].iloc[0]:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{part}.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def sha_of(n: int) -> str:
    return hashlib.sha256(b"original-%d" % n).hexdigest()


# ---------------------------------------------------------------- Label Studio's JSON export

_STAMP = "2026-01-10T12:30:00.000000Z"


def annotation(ann_id: int, task_id: int, label: str | None, *, user: int = 1,
               cancelled: bool = False, prediction: dict | None = None) -> dict:
    """One annotation as Label Studio 1.23's JSON export writes it."""
    result = [] if label is None else [{"from_name": "label", "to_name": "image",
                                        "type": "choices", "value": {"choices": [label]}}]
    return {"id": ann_id, "completed_by": user, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": _STAMP, "updated_at": _STAMP,
            "draft_created_at": None, "lead_time": 4.2, "prediction": prediction or {},
            "result_count": len(result), "unique_id": f"00000000-0000-0000-0000-{ann_id:012d}",
            "import_id": None, "last_action": None, "bulk_created": False, "task": task_id,
            "project": 1, "updated_by": user, "parent_prediction": None,
            "parent_annotation": None, "last_created_by": None}


def export_task(task_id: int, data: dict, annotations: list[dict]) -> dict:
    """One task of the export: Label Studio keeps `data` as imported and adds its own keys."""
    return {"id": task_id, "annotations": annotations, "drafts": [], "predictions": [task_id],
            "data": data, "meta": {}, "created_at": _STAMP, "updated_at": _STAMP,
            "allow_skip": True, "inner_id": task_id, "total_annotations": len(annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
            "total_predictions": 1, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": 1, "updated_by": 1,
            "comment_authors": []}


def export(tasks: list[dict], votes: dict[str, list]) -> list[dict]:
    """An export of queued `tasks` (tasks.json's entries) where `votes[score_id]` lists each
    reviewer's label (None: an empty result; ("cancel",): a skipped task); unlisted tasks
    get one vote for the model's own prediction."""
    out, ann_id = [], 0
    for task_id, task in enumerate(tasks, start=1):
        predicted = task["predictions"][0]["result"][0]["value"]["choices"][0]
        anns = []
        for user, vote in enumerate(votes.get(task["data"]["score_id"], [predicted]), start=1):
            ann_id += 1
            cancelled = vote == ("cancel",)
            anns.append(annotation(ann_id, task_id, None if cancelled else vote, user=user,
                                   cancelled=cancelled))
        out.append(export_task(task_id, dict(task["data"]), anns))
    return out
