"""`mmguard review import [EXPORT.json ...]`: Label Studio's JSON export → an incoming batch.

Each task of the export ends in exactly one place:
- `imported`: a line of `data/incoming/<name>/train.jsonl` (jsonl layout; the image is the
  reviewed capture thumbnail, copied to `img/`), keeping its capture `score_id`;
- `already_imported`: an earlier import wrote its score_id into an incoming batch (skipped, so
  importing the same export twice adds no rows);
- `quarantined`: a line of `data/review/imports/<name>/quarantine.jsonl` with its reason:
  `missing_score_id`, `never_queued` (no queued batch holds the score_id), `duplicate_task`
  (the export holds the score_id twice), `missing_image` (the queued image file is gone or
  not an image), `unknown_label` (a choice that is not a class of params.task),
  `no_label` (no annotation left once cancelled ones are dropped), `reviewer_tie` (the
  reviewers' majority is not unique; the votes are in the row).
Several annotations per task: the majority label wins; `agreement` is the share of tasks with
two or more counted annotations on which all agree. `data/review/imports/<name>/stats.json`
holds the counts (total = imported + already_imported + quarantined, asserted).

Split: every reviewed row goes to train. The queue picks rows on purpose (uncertain ones,
disagreements), so they are not a sample of traffic; kept out of val and test, they leave the
yardstick every model is measured on unchanged.

Both folders are written whole (a hidden staging folder renamed into place); incoming.batches
ignores hidden folders. Without arguments the command imports every `*.json` in
`data/review/returned/` and moves each imported file to `data/review/done/`.
"""
from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline import atomic, taxonomy
from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.review import label_studio
from pipeline.review.queue import queued_batches, read_manifest, review_dir
from pipeline.sources import incoming

SPLIT = "train"


def incoming_dir(root: Path) -> Path:
    return Path(root) / "data" / "incoming"


def imported_score_ids(root: Path) -> set[str]:
    """score_ids already written into an incoming batch (by an earlier import)."""
    found = set()
    for batch in incoming.batches(incoming_dir(root)):
        for path in batch.glob("*.jsonl"):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and row.get("score_id"):
                    found.add(str(row["score_id"]))
    return found


def _queued(root: Path) -> dict[str, tuple[Path, dict]]:
    """score_id → (its queued batch folder, its manifest row)."""
    return {row["score_id"]: (batch, row) for batch in queued_batches(root)
            for row in read_manifest(batch)}


def _image_ok(path: Path) -> bool:
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
        return True
    except (OSError, UnidentifiedImageError):
        return False


def _judge(task, classes: tuple[str, ...], queued: dict, seen: set, done: set) -> dict:
    """One export task → {"outcome": imported | already_imported | quarantined, ...}."""
    data = task.get("data") if isinstance(task, dict) else None
    task_id = task.get("id") if isinstance(task, dict) else None
    score_id = data.get("score_id") if isinstance(data, dict) else None

    def quarantine(reason: str, detail: str, **extra) -> dict:
        return {"outcome": "quarantined", "task_id": task_id, "score_id": score_id,
                "reason": reason, "detail": detail, **extra}

    if not isinstance(score_id, str) or not score_id:
        return quarantine("missing_score_id", "the task's data has no score_id, so it cannot "
                          "be traced to a queued capture row")
    if score_id in seen:
        return quarantine("duplicate_task", "the export holds this score_id more than once; "
                          "the first one was judged")
    seen.add(score_id)
    if score_id in done:
        return {"outcome": "already_imported", "task_id": task_id, "score_id": score_id}
    if score_id not in queued:
        return quarantine("never_queued", "no batch under data/review/queued/ queued this "
                          "score_id")
    batch, row = queued[score_id]
    image = batch / row["image"]
    sha = {"image_sha256": row["image_sha256"]}
    if not image.is_file() or not _image_ok(image):
        return quarantine("missing_image", f"{image} is missing or not an image", **sha)
    votes, cancelled = [], 0
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, dict):
            continue
        if annotation.get("was_cancelled"):
            cancelled += 1
            continue
        chosen = label_studio.chosen_labels(annotation)
        unknown = [c for c in chosen if c not in classes]
        if unknown or len(chosen) > 1:
            return quarantine("unknown_label", f"annotation {annotation.get('id')} chose "
                              f"{chosen}; expected one of {list(classes)}", **sha)
        if chosen:
            votes.append(chosen[0])
    if not votes:
        return quarantine("no_label", f"no annotation with a label ({cancelled} cancelled)",
                          cancelled=cancelled, **sha)
    tally = Counter(votes).most_common()
    if len(tally) > 1 and tally[0][1] == tally[1][1]:
        return quarantine("reviewer_tie", f"reviewers split evenly: {dict(tally)}",
                          votes=dict(tally), **sha)
    return {"outcome": "imported", "task_id": task_id, "score_id": score_id,
            "label": tally[0][0], "votes": len(votes), "agree": len(tally) == 1,
            "cancelled": cancelled, "batch": batch, "row": row}


def import_export(params: Params, root: Path, export: Path,
                  now: datetime | None = None) -> dict:
    """Judge every task of one export; write the imported rows as an incoming batch (when
    there are any) and the import's stats and quarantine. Returns the stats."""
    root = Path(root)
    tasks = label_studio.read_export(export)
    classes = taxonomy.class_names(params.task)
    queued, done, seen = _queued(root), imported_score_ids(root), set()
    judged = [_judge(task, classes, queued, seen, done) for task in tasks]
    imported = [j for j in judged if j["outcome"] == "imported"]
    quarantined = [{k: v for k, v in j.items() if k != "outcome"} for j in judged
                   if j["outcome"] == "quarantined"]
    multi = [j for j in imported if j["votes"] >= 2]
    ties = [q for q in quarantined if q["reason"] == "reviewer_tie"]
    name = _import_name(now or datetime.now(timezone.utc), root)
    stats = {
        "export": str(export), "name": name, "task": params.task, "total": len(tasks),
        "imported": len(imported),
        "already_imported": sum(j["outcome"] == "already_imported" for j in judged),
        "quarantined": len(quarantined),
        "quarantined_by_reason": dict(Counter(q["reason"] for q in quarantined)),
        "labels": dict(Counter(j["label"] for j in imported)),
        "cancelled_annotations": sum(j.get("cancelled", 0) for j in judged),
        # tasks with several annotations in full agreement, among all multi-annotated ones
        # (ties included: they are multi-annotated tasks that did not agree)
        "multi_annotated": len(multi) + len(ties),
        "agreement": (sum(j["agree"] for j in multi) / (len(multi) + len(ties)))
        if multi or ties else None,
        "incoming_batch": str(incoming_dir(root) / name) if imported else None,
        "split": SPLIT,
    }
    assert stats["imported"] + stats["already_imported"] + stats["quarantined"] == \
        stats["total"], stats
    if imported:
        with atomic.directory(incoming_dir(root) / name) as staging:
            _write_incoming(staging, imported)
    with atomic.directory(review_dir(root) / "imports" / name) as staging:
        (staging / "quarantine.jsonl").write_text(
            "".join(json.dumps(q, default=str) + "\n" for q in quarantined))
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _write_incoming(folder: Path, imported: list[dict]) -> None:
    (folder / "img").mkdir()
    lines = []
    for j in imported:
        row = j["row"]
        target = Path("img") / Path(row["image"]).name
        shutil.copyfile(j["batch"] / row["image"], folder / target)
        lines.append(json.dumps({
            "id": j["score_id"], "img": str(target), "text": row["text"], "label": j["label"],
            "score_id": j["score_id"], "image_sha256": row["image_sha256"],
            "review_batch": j["batch"].name, "reason": row["reason"],
            "model_prediction": row["prediction"], "reviewers": j["votes"]}))
    (folder / f"{SPLIT}.jsonl").write_text("\n".join(lines) + "\n")


def _import_name(now: datetime, root: Path) -> str:
    base = f"review-{now:%Y%m%dT%H%M%SZ}"
    name, n = base, 1
    while (incoming_dir(root) / name).exists() or (review_dir(root) / "imports" / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def import_returned(params: Params, root: Path) -> list[dict]:
    """Import every export waiting in data/review/returned/ (oldest name first) and move each
    one to data/review/done/ once imported. A bad export stops with its error and stays where
    it is, so nothing is marked done that was not imported."""
    returned = review_dir(root) / "returned"
    done = review_dir(root) / "done"
    results = []
    for export in sorted(returned.glob("*.json")) if returned.is_dir() else []:
        try:
            results.append(import_export(params, root, export))
        except StageFailed as exc:
            raise StageFailed(f"{exc} (left in {returned}; {len(results)} earlier export(s) "
                              "imported)") from None
        done.mkdir(parents=True, exist_ok=True)
        export.rename(done / export.name)
    return results
