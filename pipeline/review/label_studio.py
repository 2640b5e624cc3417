"""The formats Label Studio reads and writes, and nothing else (no server calls here).

- `label_config()`: the labelling config: the image, the text, one single choice among the
  task's class names (`from_name` "label", `to_name` "image").
- `task()`: one task of the tasks JSON a project imports: `data` holds `image` (a URL Label
  Studio serves, below), `text`, and our own keys `score_id`, `batch`, `image_sha256`;
  `predictions` holds the served model's answer as a pre-annotation (a `choices` result and
  its probability as `score`).
- `read_export()`: Label Studio's "JSON" export (a list of tasks, each with `id`, `data` and
  `annotations`: `{id, completed_by, result: [{from_name, to_name, type: "choices",
  value: {choices: [...]}}], was_cancelled, ...}`), checked for shape with clear errors.

Images are served by Label Studio's local-files storage: start it with
`LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT=<project>/data`, add a "Local files"
source storage whose path is the batch's `images/` folder (or any folder above it under the
document root), and the task's `/data/local-files/?d=review/queued/<batch>/images/<file>` URL
resolves to the file. Label Studio's docs describe the same setting.
"""
from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipeline.errors import StageFailed

FROM_NAME, TO_NAME = "label", "image"
LOCAL_FILES_URL = "/data/local-files/?d="


def label_config(class_names: tuple[str, ...]) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <Text name="text" value="$text"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def image_url(relative_to_data: str) -> str:
    """The URL of a file under the project's data/ folder, as local-files storage serves it."""
    return LOCAL_FILES_URL + relative_to_data


def task(*, image: str, text: str, score_id: str, batch: str, image_sha256: str,
         prediction: str, confidence: float, model_version: str | None) -> dict:
    return {
        "data": {"image": image, "text": text, "score_id": score_id, "batch": batch,
                 "image_sha256": image_sha256},
        "predictions": [{
            "model_version": str(model_version) if model_version is not None else "unknown",
            "score": float(confidence),
            "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                        "value": {"choices": [prediction]}}],
        }],
    }


def read_export(path: Path) -> list[dict]:
    """The tasks of a Label Studio JSON export. A file that is not whole, valid JSON, or not a
    list of task objects, stops with one error naming the file and what is wrong; the contents
    of each task are judged by the importer, task by task."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise StageFailed(f"{path}: cannot read the export ({exc.strerror})") from None
    try:
        tasks = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StageFailed(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); expected "
                          "Label Studio's JSON export") from None
    except json.JSONDecodeError as exc:
        ends_early = exc.pos >= len(raw.rstrip()) or exc.msg.startswith("Unterminated string")
        cut = " (the file ends early: truncated?)" if ends_early and raw.strip() else ""
        raise StageFailed(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}{cut}; nothing was imported") from None
    if not isinstance(tasks, list):
        raise StageFailed(f"{path}: expected Label Studio's JSON export (a list of tasks), got "
                          f"a JSON {type(tasks).__name__}; nothing was imported")
    return tasks


def chosen_labels(annotation: dict) -> list[str]:
    """The choices one annotation made with our `label` control (every choice it names)."""
    chosen = []
    for item in annotation.get("result") or []:
        if isinstance(item, dict) and item.get("type") == "choices" and \
                item.get("from_name") == FROM_NAME:
            chosen.extend(str(c) for c in (item.get("value") or {}).get("choices") or [])
    return chosen
