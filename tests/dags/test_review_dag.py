"""mmguard_review runs for real (`dag.test()` on SQLite, the real `mmguard review` commands) on
a planted capture log and a planted Label Studio export: it queues the new traffic, imports the
export as an incoming batch, moves it to done/, and its import task emits the incoming-batch
Asset event that schedules the drift monitor. A run with no export waiting skips the import
and emits nothing (slow tier: a second dag.test() run)."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml

from pipeline.params import parse_params
from pipeline.review import queue
from pipeline.sources import incoming
from tests.dags.airflow_child import REPO, run_child
from tests.dags.test_retrain_loop import RUN_DAG
from tests.review.planted import export, row, write_log


def _rows(numbers, now):
    rows = [row(n, 0.45) for n in numbers]
    for r in rows:  # inside the DAG's 24 h window
        r["time"] = pd.Timestamp(now - timedelta(minutes=30))
    return rows


def _project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    settings["review"].update(band=0.5, qc_rows=0)  # every planted row is uncertain
    (project / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return project, settings


def _run_review_dag(project, tmp_path, migrated_db) -> dict:
    dags = tmp_path / "dags"  # this DAG alone: parsing the retrain DAG too costs seconds
    dags.mkdir()
    for name in ("_common.py", "review.py"):
        shutil.copy2(REPO / "dags" / name, dags)
    return run_child(RUN_DAG, project, tmp_path / "home", "mmguard_review", "{}",
                     db=migrated_db, dags=dags, timeout=600)


def test_review_dag_queues_imports_and_announces_the_batch(tmp_path, migrated_db):
    project, settings = _project(tmp_path)
    now = datetime.now(timezone.utc)
    log = project / "artifacts/monitoring/log"
    write_log(log, _rows(range(1, 4), now), part="part-1")
    # yesterday's batch, reviewed and returned
    first = queue.build_queue(parse_params(settings), project, "24h",
                              now=now - timedelta(seconds=5))
    tasks = json.loads((queue.queued_batches(project)[0] / "tasks.json").read_text())
    returned = project / "data/review/returned"
    returned.mkdir(parents=True)
    (returned / "export.json").write_text(json.dumps(export(tasks, {})))
    write_log(log, _rows(range(4, 6), now), part="part-2")  # today's new traffic

    result = _run_review_dag(project, tmp_path, migrated_db)
    assert result["state"] == "success", result["log"][-4000:]
    assert result["tasks"] == {"build_queue": "success", "exports_waiting": "success",
                               "import_returned": "success"}
    batches = queue.queued_batches(project)
    assert len(batches) == 2 and first["batch"] == str(batches[0])
    assert {r["score_id"] for r in queue.read_manifest(batches[1])} == {"req4:0", "req5:0"}
    [batch] = incoming.batches(project / "data/incoming")
    assert len(list(incoming.read_batch(batch, "hateful_memes"))) == 3
    assert not (returned / "export.json").exists()
    assert (project / "data/review/done/export.json").exists()
    # the Asset the drift monitor is scheduled on (test_dag_structure checks that link)
    assert result["events"] == [{"asset": "mmguard_incoming_batch", "extra": {}}]


@pytest.mark.slow  # a second dag.test() run: more than the fast tier affords
def test_with_no_export_waiting_the_import_is_skipped_and_nothing_announced(tmp_path,
                                                                          migrated_db):
    project, _ = _project(tmp_path)
    result = _run_review_dag(project, tmp_path, migrated_db)
    assert result["tasks"] == {"build_queue": "success", "exports_waiting": "success",
                               "import_returned": "skipped"}
    assert result["events"] == [] and not (project / "data/incoming").exists()
