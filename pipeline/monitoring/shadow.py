"""Shadow scoring: the served process also scores every request with a second alias (e.g.
@challenger), off the request path, and logs both answers to the capture log; the report
compares them.

- `ShadowScorer` (used by the served pyfunc, pipeline/serving.py): `submit()` puts the decoded
  request on a bounded queue and returns at once; one worker thread scores it with the shadow
  slot's current model and records the rows with role `shadow`, the shadow version and the
  served rows' score ids. A full queue drops the request and counts its rows (`dropped_rows`,
  logged); a request arriving while no shadow model is loaded, or while the shadow alias names
  the served version itself, is skipped and counted (`skipped_rows`). The client's answer is
  computed before and never read or written here.
- `report()` (`mmguard shadow-report --since 24h`): agreement, score shift and the rows the
  shadow would have labelled differently, from the capture log's served/shadow pairs.
- `shadow_rows()`: how many shadow rows a window holds (what `registry.gate.require_shadow_rows`
  asks of a challenger).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.monitoring import capture
from pipeline.params import Params

log = logging.getLogger(__name__)
DROP_LOG_EVERY_S = 60.0
EXAMPLES = 5


class ShadowScorer:
    """Scores submitted requests with `slot.current` on one background thread."""

    def __init__(self, slot, max_pending: int, score):
        """`slot`: a hot_swap.Slot; `score(served_model, images, texts, batch_size)`: the
        output frame the pyfunc would answer with that model."""
        self.slot = slot
        self.score = score
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.scored_rows = self.dropped_rows = self.skipped_rows = self.failed_rows = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_drop_log = 0.0

    def submit(self, model_input: pd.DataFrame, images: list, texts: list, request_id: str,
               served_version: str | None, batch_size: int) -> bool:
        """Queue a scored request for the shadow; False when it was dropped (queue full)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mmguard-shadow",
                                                daemon=True)
                self._thread.start()
        try:
            self.queue.put_nowait((model_input, images, texts, request_id, served_version,
                                   batch_size))
            return True
        except queue.Full:
            self._count_drop(len(images))
            return False

    def _count_drop(self, rows: int) -> None:
        with self._lock:
            self.dropped_rows += rows
            now = time.monotonic()
            if now - self._last_drop_log < DROP_LOG_EVERY_S:
                return
            self._last_drop_log = now
        log.warning("shadow: %d rows dropped so far (more than %d requests waiting for the "
                    "shadow model); the served answers are unaffected", self.dropped_rows,
                    self.queue.maxsize)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            try:
                self._score(*job)
            except Exception:  # noqa: BLE001 - the shadow must never take serving down
                with self._lock:
                    self.failed_rows += len(job[1])
                log.exception("shadow: scoring a request failed; it has no shadow rows")
            finally:
                self.queue.task_done()

    def _score(self, model_input, images, texts, request_id, served_version, batch_size):
        shadow = self.slot.current  # one model for the whole request, as on the served path
        if shadow is None or shadow.version == served_version or not capture.active():
            with self._lock:
                self.skipped_rows += len(images)
            return
        output = self.score(shadow, images, texts, batch_size)
        capture.record(None, model_input, images, texts, output, scored_by=shadow.identity,
                       role=capture.SHADOW, request_id=request_id)
        with self._lock:
            self.scored_rows += len(images)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted request has been handled; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


# ---------------------------------------------------------------- reading the pairs back

PAIR_COLUMNS = ["score_id", "model_version", "prediction", "probabilities", "image_sha256",
                "text"]


def _window(params: Params, root: Path, since: str) -> tuple[str, datetime]:
    cutoff = datetime.now(timezone.utc) - capture.parse_since(since)
    return capture.log_location(params.monitoring, root), cutoff


def shadow_rows(params: Params, root: Path, since: str | None = None,
                version: str | None = None) -> int:
    """Shadow rows captured in the last `since` (default monitoring.traffic_window), only those
    of shadow version `version` when given."""
    uri, cutoff = _window(params, root, since or params.monitoring.traffic_window)
    frame = capture.read_log(uri, cutoff, columns=["model_version"], roles=(capture.SHADOW,))
    if version is not None and not frame.empty:
        frame = frame[frame["model_version"].astype(str) == str(version)]
    return int(len(frame))


def _score_shift(served: dict, shadow: dict, served_label: str) -> float:
    """|p_shadow − p_served| of the positive class (two classes: the second, the task's
    flagged class) or, with more classes, of the class the served model predicted."""
    names = list(served)
    cls = names[1] if len(names) == 2 else served_label
    return abs(float(shadow.get(cls, np.nan)) - float(served[cls]))


def _example(row) -> dict:
    text = row.text_served if isinstance(row.text_served, str) else ""
    return {"score_id": row.score_id, "image_sha256": row.image_sha256_served,
            "text": text[:80]}


def report(params: Params, root: Path, since: str) -> dict:
    """Served vs shadow answers to the same rows captured in the last `since`."""
    uri, cutoff = _window(params, root, since)
    frame = capture.read_log(uri, cutoff, columns=PAIR_COLUMNS, roles=None)
    if frame.empty:
        frame = pd.DataFrame(columns=["role", *PAIR_COLUMNS])
    served = frame[frame["role"] == capture.SERVED]
    shadow = frame[(frame["role"] == capture.SHADOW) & frame["score_id"].notna()] \
        .drop_duplicates("score_id")
    pairs = served.merge(shadow, on="score_id", suffixes=("_served", "_shadow"))
    result = {"window": since, "log": uri, "served_rows": int(len(served)),
              "shadow_rows": int(len(shadow)), "paired_rows": int(len(pairs)),
              # dropped when the shadow fell behind, scored before it loaded or while it named
              # the served version itself, or captured before rows had score ids
              "served_rows_without_shadow": int(len(served) - len(pairs)),
              "versions": [], "agreement": None, "score_shift": None, "disagreements": []}
    if pairs.empty:
        return result
    result["versions"] = [
        {"served": str(s), "shadow": str(h), "rows": int(n)}
        for (s, h), n in pairs.groupby(["model_version_served", "model_version_shadow"],
                                       dropna=False).size().items()]
    agree = pairs["prediction_served"] == pairs["prediction_shadow"]
    result["agreement"] = float(agree.mean())
    shifts = np.array([_score_shift(json.loads(a), json.loads(b), label) for a, b, label in
                       zip(pairs["probabilities_served"], pairs["probabilities_shadow"],
                           pairs["prediction_served"])])
    classes = list(json.loads(pairs["probabilities_served"].iloc[0]))
    result["score_shift"] = {
        "of": f"p({classes[1]})" if len(classes) == 2 else "p(the served prediction's class)",
        "mean": float(np.nanmean(shifts)), "p95": float(np.nanpercentile(shifts, 95)),
        "max": float(np.nanmax(shifts))}
    changed = pairs[~agree]
    for (was, would), group in changed.groupby(["prediction_served", "prediction_shadow"]):
        result["disagreements"].append({
            "served": was, "shadow": would, "rows": int(len(group)),
            "examples": [_example(row) for row in group.head(EXAMPLES).itertuples()]})
    result["disagreements"].sort(key=lambda d: (-d["rows"], d["served"], d["shadow"]))
    return result
