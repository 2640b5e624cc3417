"""`mmguard drift --since` on captured traffic: it judges against the champion's training
reference (not the workspace's manifest, which a refused retrain has moved on), and it reports
the rows the capture writer had to drop in its window."""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PythonModelContext
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.monitoring import capture
from pipeline.params import MonitoringParams
from pipeline.paths import Paths
from pipeline.serving import MMGuardPyfunc
from tests.data.synthetic_sides import save_tiny_model, synthetic_batch

PARAMS = "drift:\n  log_to_mlflow: false\n"
SNAPSHOT = "artifacts/monitoring/reference/manifest.parquet"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def _clean_manifest(paths: Paths, seed: int, rows: int, shift: str | None = None) -> None:
    """The workspace's clean manifest: `rows` train items of synthetic seed `seed`."""
    batch = synthetic_batch(seed, max(rows, 60), shift)
    records = []
    for k, (row, image) in enumerate(zip(batch.rows.head(rows).itertuples(), batch.images)):
        rel = f"artifacts/ingest/images/{seed}-{k}.png"
        (paths.root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(paths.root / rel)
        records.append({"id": row.id, "split": "train", "image_path": rel, "text": row.text,
                        "label": row.label})
    paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_parquet(paths.manifest)


def _drift_since(paths: Paths, out: Path):
    return CliRunner().invoke(app, ["drift", "--since", "24h", "--root", str(paths.root),
                                    "--params", str(paths.root / "params.yaml"),
                                    "--out", str(out)])


def test_drift_since_judges_against_the_champions_reference_after_a_refused_retrain(
        tmp_path, tiny_model, monkeypatch):
    paths = Paths(tmp_path / "project")
    shutil.copytree(tiny_model, paths.model_dir)
    (paths.root / "params.yaml").write_text(PARAMS)
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "log"))
    monkeypatch.setenv(capture.ENV_SWITCH, "1")
    monkeypatch.setattr(capture, "_LOG", None)
    # The champion trained on seed 0; promotion snapshotted its reference split.
    _clean_manifest(paths, 0, 80)
    snapshot = CliRunner().invoke(app, ["monitor", "reference", "--root", str(paths.root),
                                        "--params", str(paths.root / "params.yaml")])
    assert snapshot.exit_code == 0, snapshot.output
    # A retrain then ingested data in a new vocabulary and was refused: the workspace's clean
    # manifest is no longer what the (unchanged) champion trained on.
    _clean_manifest(paths, 7, 60, "novel_vocabulary")

    # Traffic like the champion's training data, scored through the served pyfunc.
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the capture defaults apply
    model = MMGuardPyfunc()
    context = PythonModelContext(artifacts={"model_dir": str(tiny_model)}, model_config={})
    model.load_context(context)
    traffic = synthetic_batch(1000, 60)
    encoded = []
    for image in traffic.images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    model.predict(context, pd.DataFrame({"image": encoded, "text": traffic.rows["text"]}))
    capture.flush()

    result = _drift_since(paths, tmp_path / "since")

    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "since" / "drift.json").read_text())
    assert summary["reference"] == f"the champion's training reference {SNAPSHOT}"
    assert (summary["n_reference"], summary["n_current"]) == (80, 60)
    # Against the data the champion knows, its usual traffic is no drift.
    assert summary["dataset_drift"] is False, summary
    assert summary["dropped_rows"] == 0


def _scored(n: int):
    images = [Image.new("RGB", (40, 40), (k % 255, 80, 120)) for k in range(n)]
    output = pd.DataFrame({"label": ["hateful"] * n, "label_index": [1] * n,
                           "prob_not_hateful": [0.25] * n, "prob_hateful": [0.75] * n})
    return [b"%d" % k for k in range(n)], images, ["a caption"] * n, output


def test_dropped_rows_are_logged_persisted_per_writer_and_reported_by_drift_since(
        tmp_path, monkeypatch, caplog):
    log_dir = tmp_path / "log"
    settings = MonitoringParams(max_buffer_rows=5, flush_rows=1000)
    first = capture.CaptureLog(settings, str(log_dir), {"name": "m", "version": "1"})
    first.record(*_scored(5))
    first.record(*_scored(3))  # the writer is 5 rows behind: these 3 are dropped
    first.record(*_scored(2))
    with caplog.at_level(logging.WARNING, logger=capture.__name__):
        assert first.flush() == 5
    assert "capture: 5 rows dropped" in caplog.text
    assert first.flush() == 0  # nothing new dropped: no second record
    second = capture.CaptureLog(settings, str(log_dir), {"name": "m", "version": "1"})
    second.record(*_scored(5))
    second.record(*_scored(4))
    second.close()

    records = [json.loads(p.read_text()) for p in sorted(log_dir.rglob("dropped-*.json"))]
    assert sorted((r["dropped"], r["session"]) for r in records) == \
        sorted([(5, first.session), (4, second.session)])
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    assert capture.dropped_rows(str(log_dir), hour_ago) == 9
    assert capture.dropped_rows(str(log_dir), hour_ago + timedelta(hours=2)) == 0
    assert len(capture.read_log(str(log_dir), hour_ago)) == 10  # the records are not parts

    paths = Paths(tmp_path / "project")
    (paths.root).mkdir()
    (paths.root / "params.yaml").write_text(PARAMS)
    _clean_manifest(paths, 0, 60)
    monkeypatch.setenv(capture.ENV_URI, str(log_dir))
    result = _drift_since(paths, tmp_path / "since")

    assert result.exit_code == 0, result.output
    assert "the capture writer dropped 9 rows in this window" in result.stderr
    assert json.loads(result.stdout)["dropped_rows"] == 9
    summary = json.loads((tmp_path / "since" / "drift.json").read_text())
    assert summary["dropped_rows"] == 9 and summary["n_current"] == 10
    assert summary["verdict"].startswith("too few rows to judge")
    # No champion snapshot yet: the clean manifest stands in, and drift.json says so.
    stats = json.loads((tmp_path / "since" / "stats.json").read_text())
    assert summary["reference"] == ("split 'train' of artifacts/dedupe/manifest.parquet (no "
                                    f"champion reference at {SNAPSHOT}: nothing promoted yet)")
    assert any("dropped 9 rows" in note for note in stats["notes"])
    assert np.isfinite(summary["drift_share"])
