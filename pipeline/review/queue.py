"""`mmguard review queue --since 24h`: captured rows → a review batch for Label Studio.

Reads the capture log's served and shadow rows of the window, applies the policy (policy.py)
and writes `data/review/queued/<batch>/` whole or not at all (built in a hidden folder, then
renamed):
- `images/<image sha256>.jpg`: the capture thumbnails the reviewers see;
- `tasks.json`: Label Studio tasks (label_studio.task), `label_config.xml`;
- `manifest.jsonl`: one line per queued row: its capture score_id, why it was picked, what
  the model said (version, prediction, probabilities, the threshold applied), the image file;
- `stats.json`: where every row read went (policy.py's counts) and the thresholds used.
Rows an earlier batch queued (same image + text) are not queued again.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline import atomic, taxonomy
from pipeline.monitoring import capture
from pipeline.params import Params
from pipeline.review import label_studio
from pipeline.review.policy import FALLBACK_THRESHOLD, Threshold, select

LOG_COLUMNS = ["score_id", "model_name", "model_version", "image_sha256", "thumbnail", "text",
               "prediction", "confidence", "probabilities"]


def review_dir(root: Path) -> Path:
    return Path(root) / "data" / "review"


def queued_batches(root: Path) -> list[Path]:
    """Finished batch folders, by name (hidden ones are still being written)."""
    folder = review_dir(root) / "queued"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_manifest(batch: Path) -> list[dict]:
    path = batch / "manifest.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _versions_thresholds(params: Params, root: Path, served: pd.DataFrame) -> dict:
    """model_version → Threshold: the version's `operating.threshold` tag, else 0.5 with why."""
    from pipeline.operating_points import Served

    versions = sorted({str(v) for v in served["model_version"]}) if len(served) else []
    found: dict[str, Threshold] = {}
    known = [v for v in versions if v not in ("None", "nan")]
    for v in versions:
        if v not in known:
            found[v] = Threshold(FALLBACK_THRESHOLD, f"fallback {FALLBACK_THRESHOLD}: the rows "
                                 "name no model version")
    if not known:
        return found
    from pipeline import tracking

    uri = tracking.tracking_uri(params, root)
    if tracking.missing_sqlite_store(uri):
        return found | {v: Threshold(FALLBACK_THRESHOLD, f"fallback {FALLBACK_THRESHOLD}: no "
                                     f"registry at {uri}") for v in known}
    try:
        from pipeline.registry import store

        client, _ = store.client_for(params, root)
        with capture.one_short_try(params.monitoring.registry_timeout_s):
            for v in known:
                names = served.loc[served["model_version"].astype(str) == v, "model_name"]
                name = names.dropna().iloc[0] if names.notna().any() else store.model_name(params)
                version = store.version_or_none(client, name, v)
                threshold = Served.from_tags(dict(version.tags)).threshold if version else None
                found[v] = Threshold(threshold, f"operating.threshold tag of {name} v{v}") \
                    if threshold is not None else Threshold(
                        FALLBACK_THRESHOLD, f"fallback {FALLBACK_THRESHOLD}: {name} v{v} "
                        f"{'has no operating.threshold tag' if version else 'is not in the registry'}")
    except Exception as exc:  # noqa: BLE001 - the queue still works at the default threshold
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        for v in known:
            found.setdefault(v, Threshold(FALLBACK_THRESHOLD, f"fallback {FALLBACK_THRESHOLD}: "
                                          f"the registry could not be read ({reason})"))
    return found


def _batch_name(now: datetime, root: Path) -> str:
    base = f"{now:%Y%m%dT%H%M%SZ}"
    name, n = base, 1
    while (review_dir(root) / "queued" / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def build_queue(params: Params, root: Path, since: str, now: datetime | None = None) -> dict:
    """Pick the rows captured in the last `since` and write them as a review batch; the stats
    (with `batch`: the folder written, or null when no row was picked)."""
    root = Path(root)
    now = now or datetime.now(timezone.utc)
    uri = capture.log_location(params.monitoring, root)
    frame = capture.read_log(uri, now - capture.parse_since(since), columns=LOG_COLUMNS,
                             roles=None)
    if frame.empty:
        frame = pd.DataFrame(columns=["time", "role", *LOG_COLUMNS])
    served = frame[frame["role"] == capture.SERVED]
    shadow = frame[frame["role"] == capture.SHADOW]
    classes = taxonomy.class_names(params.task)
    thresholds = _versions_thresholds(params, root, served) if len(classes) == 2 else {}
    earlier = {row["dedupe_key"] for batch in queued_batches(root)
               for row in read_manifest(batch)}
    picked, counts = select(served, shadow, classes, thresholds, params.review, earlier)
    stats = {"window": since, "log": uri, "read_at": now.isoformat(), "batch": None,
             "policy": params.review.model_dump(), **counts,
             "thresholds": {v: {"threshold": t.value, "source": t.source}
                            for v, t in thresholds.items()}
             if len(classes) == 2 else "seven classes: top-1 / margin bounds, no threshold"}
    if picked.empty:
        return stats
    name = _batch_name(now, root)
    stats["batch"] = str(review_dir(root) / "queued" / name)
    with atomic.directory(review_dir(root) / "queued" / name) as staging:
        _write_batch(staging, name, picked, classes, stats)
    return stats


def _write_batch(folder: Path, name: str, picked: pd.DataFrame, classes: tuple[str, ...],
                 stats: dict) -> None:
    (folder / "images").mkdir()
    tasks, lines = [], []
    for row in picked.itertuples(index=False):
        key = row.key.split("\x1f", 1)[0].removeprefix("thumb:")
        image = f"images/{key}.jpg"
        (folder / image).write_bytes(bytes(row.thumbnail))
        sha = row.image_sha256 if isinstance(row.image_sha256, str) else key
        version = None if pd.isna(row.model_version) else str(row.model_version)
        tasks.append(label_studio.task(
            image=label_studio.image_url(f"review/queued/{name}/{image}"), text=row.text,
            score_id=row.score_id, batch=name, image_sha256=sha, prediction=str(row.prediction),
            confidence=row.confidence, model_version=version))
        lines.append(json.dumps({
            "score_id": row.score_id, "reason": row.reason, "dedupe_key": row.key,
            "image": image,
            "image_sha256": sha, "text": row.text, "time": pd.Timestamp(row.time).isoformat(),
            "model_name": row.model_name, "model_version": version,
            "prediction": str(row.prediction), "confidence": float(row.confidence),
            "probabilities": json.loads(row.probabilities),
            "threshold": None if pd.isna(row.threshold) else float(row.threshold),
            "shadow_prediction": None if pd.isna(row.shadow_prediction)
            else str(row.shadow_prediction),
            "shadow_version": None if pd.isna(row.shadow_version) else str(row.shadow_version)}))
    (folder / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n")
    (folder / "label_config.xml").write_text(label_studio.label_config(classes))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
