"""Privacy: a takedown by image hash removes every copy the loop made (capture log, served and
shadow rows; queued batch; returned and done exports; import quarantine; incoming batch), and
says what it could not remove (a batch ingest already read) and why; retention by age."""
from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.monitoring import capture
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.review import importer, purge, queue
from pipeline.sources import incoming
from pipeline.stages import ingest
from tests.review.planted import NOW, export, row, sha_of, write_log

PARAMS = parse_params({"review": {"qc_rows": 0, "band": 0.5},
                       "ingest": {"sources": ["incoming"]}})
TAKEN_DOWN = 2  # image 2: two served rows with different captions, one shadow row


def _everything(root) -> str:
    """Every byte under root that is text, for a final grep."""
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".jsonl"))


@pytest.fixture
def loop(tmp_path):
    """Traffic → queue → export (returned, done and a bad one quarantined) → incoming batch."""
    root = tmp_path
    log = root / "artifacts/monitoring/log"
    write_log(log, [row(1, 0.4), row(2, 0.45), row(3, 0.5, image=TAKEN_DOWN, text="other")],
              part="part-1")
    write_log(log, [row(4, 0.6), row(2, 0.7, role="shadow")], part="part-2")
    queue.build_queue(PARAMS, root, "24h", now=NOW)
    tasks = json.loads(next((root / "data/review/queued").glob("*/tasks.json")).read_text())
    assert len(tasks) == 4
    done = root / "data/review/done"
    done.mkdir(parents=True)
    (done / "first.json").write_text(json.dumps(export(tasks[:2], {})))
    (done / "second.json").write_text(json.dumps(export(tasks[2:], {
        t["data"]["score_id"]: ["hateful", "not_hateful"] for t in tasks[2:]})))
    stats = [importer.import_export(PARAMS, root, done / name)
             for name in ("first.json", "second.json")]
    assert [s["imported"] for s in stats] == [2, 0] and stats[1]["quarantined"] == 2
    (root / "data/review/returned").mkdir()
    (root / "data/review/returned/third.json").write_text(json.dumps(export(tasks, {})))
    return root, tasks


def test_a_takedown_removes_every_copy(loop):
    root, tasks = loop
    sha = sha_of(TAKEN_DOWN)
    assert sha in _everything(root)
    (root / "data/review/returned/cut.json").write_text('[{"data": {"image_sha256": "' + sha)
    result = purge.purge_image(PARAMS, root, sha.upper())
    assert result["capture_log"] == {"rows": 3, "parts_rewritten": 2, "parts_deleted": 0}
    assert result["queued"] == {"rows": 2, "images": 1}
    assert result["exports"]["tasks"] == 2 + 2  # two tasks in done/ and two in returned/
    assert result["incoming"]["rows"] + result["import_reports"]["rows"] == 2
    # a truncated export cannot be searched: named, not silently passed over
    assert [Path(n["place"]).name for n in result["not_purged"]] == ["cut.json"]
    (root / "data/review/returned/cut.json").unlink()
    assert sha not in _everything(root)
    assert not list(root.rglob(f"{sha}.*"))
    left = capture.read_log(capture.log_location(PARAMS.monitoring, root),
                            NOW - timedelta(days=1), roles=None)
    assert len(left) == 2 and sha not in set(left["image_sha256"])
    # the rest is whole: the other rows, their images, an incoming batch ingest can read
    assert len(queue.read_manifest(next((root / "data/review/queued").iterdir()))) == 2


def test_a_batch_ingest_has_read_is_named_not_purged(loop):
    root, _ = loop
    sha = sha_of(TAKEN_DOWN)
    ingest.run(PARAMS, Paths(root))  # the real stage reads the incoming batch
    batches = purge.ingested_batches(root)
    assert len(batches) == 1
    result = purge.purge_image(PARAMS, root, sha)
    batch = next(iter(batches))
    assert [Path(n["place"]).name for n in result["not_purged"]] == [batch]
    assert "ingest manifest" in result["not_purged"][0]["why"]
    assert sha in "".join(p.read_text() for p in (root / "data/incoming" / batch).glob("*.jsonl"))


def test_purge_by_age_removes_old_traffic_and_review_copies(loop):
    root, _ = loop
    log = root / "artifacts/monitoring/log"
    write_log(log, [row(9, 0.4, minutes_ago=60 * 24 * 40)], part="part-old")
    old = (NOW - timedelta(days=31)).timestamp()
    os.utime(root / "data/review/done/first.json", (old, old))
    review_batch = next(incoming.batches(root / "data/incoming").__iter__())
    os.utime(review_batch, (old, old))
    now = NOW + timedelta(minutes=1)
    result = purge.purge_older_than(PARAMS, root, None, now=now)  # retention_days: 30
    assert result["older_than_days"] == 30
    assert result["capture_log"] == {"rows": 1, "parts_rewritten": 0, "parts_deleted": 1}
    assert (result["exports"], result["incoming_batches"], result["queued_batches"]) == (1, 1, 0)
    assert not (root / "data/review/done/first.json").exists() and not review_batch.exists()
    frame = capture.read_log(str(log), NOW - timedelta(days=400), roles=None)
    assert len(frame) == 5 and (frame["time"] >= pd.Timestamp(now - timedelta(days=30))).all()
    # a week later the queued batch (read at NOW) is past 30 days too
    later = purge.purge_older_than(PARAMS, root, 7, now=now + timedelta(days=8))
    assert later["queued_batches"] == 1 and later["capture_log"]["rows"] == 5
