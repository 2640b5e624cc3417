"""The capture log: the served pyfunc's hook, the parquet layout, the cap, and drift on the
captured traffic (`mmguard drift --since`)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PythonModelContext
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import StageFailed
from pipeline.monitoring import capture
from pipeline.params import MonitoringParams, parse_params
from pipeline.paths import Paths
from pipeline.serving import MMGuardPyfunc
from pipeline.stages import drift
from tests.data.synthetic_sides import save_tiny_model, synthetic_batch


def _png(colour: tuple[int, int, int], size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def served(tmp_path, tiny_model, monkeypatch):
    """A loaded pyfunc whose captures go to tmp_path/log, as `mlflow models serve` would run it."""
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "log"))
    monkeypatch.setenv(capture.ENV_SWITCH, "1")
    monkeypatch.setenv("MMGUARD_MODEL_NAME", "mmguard-hateful_memes")
    monkeypatch.setenv("MMGUARD_MODEL_VERSION", "7")
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the monitoring defaults apply
    monkeypatch.setattr(capture, "_LOG", None)
    model = MMGuardPyfunc()
    context = PythonModelContext(artifacts={"model_dir": str(tiny_model)}, model_config={})
    model.load_context(context)
    return model, context


def test_every_scored_row_is_captured_with_its_fields(served, tmp_path):
    model, context = served
    images = [_png((200, 30, 30)), _png((30, 30, 200), (64, 32))]
    frame = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in images],
                          "text": ["a red box", "a blue box"]})

    output = model.predict(context, frame)
    assert capture.flush() == 2

    [part] = list((tmp_path / "log").glob("date=*/part-*.parquet"))
    assert part.parent.name == f"date={datetime.now(timezone.utc):%Y-%m-%d}"
    log = pd.read_parquet(part)
    assert list(log["text"]) == ["a red box", "a blue box"]
    assert list(log["image_sha256"]) == [hashlib.sha256(b).hexdigest() for b in images]
    assert set(log["model_name"]) == {"mmguard-hateful_memes"}
    assert set(log["model_version"]) == {"7"}
    assert list(log["prediction"]) == list(output["label"])
    probabilities = [json.loads(p) for p in log["probabilities"]]
    assert probabilities[1]["hateful"] == pytest.approx(output["prob_hateful"][1])
    assert list(log["image_width"]) == [48, 64] and log["brightness"].notna().all()
    with Image.open(io.BytesIO(log["thumbnail"][1])) as thumb:
        assert thumb.size == (64, 32)  # never upscaled; larger images shrink to thumbnail_side
    assert (pd.Timestamp.now(tz="UTC") - log["time"]).max() < pd.Timedelta(minutes=5)


def test_capture_off_writes_nothing(served, tmp_path, monkeypatch):
    model, context = served
    monkeypatch.setenv(capture.ENV_SWITCH, "0")
    model.predict(context, pd.DataFrame({"image": [base64.b64encode(_png((9, 9, 9))).decode()],
                                         "text": ["x"]}))
    assert capture.flush() == 0 and not (tmp_path / "log").exists()


def _scored(n: int) -> tuple[list, list, list, pd.DataFrame]:
    images = [Image.new("RGB", (40, 40), (k % 255, 80, 120)) for k in range(n)]
    probs = np.tile([0.25, 0.75], (n, 1))
    output = pd.DataFrame({"label": ["hateful"] * n, "label_index": [1] * n,
                           "prob_not_hateful": probs[:, 0], "prob_hateful": probs[:, 1]})
    return [_png((k, 0, 0)) for k in range(n)], images, ["t"] * n, output


def test_size_cap_deletes_the_oldest_parts_and_overflow_is_counted(tmp_path):
    settings = MonitoringParams(max_bytes=10_000, max_buffer_rows=50, flush_rows=1000)
    log = capture.CaptureLog(settings, str(tmp_path / "log"), {"name": "m", "version": "1"})
    sizes = []
    for _ in range(6):
        log.record(*_scored(20))
        log.flush()
        sizes.append(sum(p.stat().st_size for p in (tmp_path / "log").rglob("*.parquet")))
    parts = sorted((tmp_path / "log").rglob("*.parquet"))
    assert len(parts) < 6 and parts[-1].name.endswith(f"-{log.parts}.parquet")
    assert max(sizes[1:]) <= 10_000 + parts[-1].stat().st_size
    assert log.written == 120 and log.dropped == 0

    log.record(*_scored(40))
    log.record(*_scored(20))  # 60 > max_buffer_rows: counted, not queued, request not blocked
    assert log.dropped == 20 and log.flush() == 40


def test_background_thread_flushes_without_being_asked(tmp_path):
    settings = MonitoringParams(flush_rows=5, flush_seconds=0.2)
    log = capture.CaptureLog(settings, str(tmp_path / "log"))
    log.record(*_scored(5))
    deadline = datetime.now() + timedelta(seconds=20)
    while log.written < 5 and datetime.now() < deadline:
        pass
    assert log.written == 5 and list((tmp_path / "log").rglob("*.parquet"))
    log.close()


def test_since_is_parsed_strictly():
    assert capture.parse_since("24h") == timedelta(hours=24)
    assert capture.parse_since("1.5d") == timedelta(days=1.5)
    with pytest.raises(StageFailed, match="expected a number and a unit"):
        capture.parse_since("yesterday")


def _traffic_project(tmp_path, tiny_model, monkeypatch):
    """A project whose clean manifest is synthetic seed 0 and whose model is the tiny one."""
    paths = Paths(tmp_path / "project")
    shutil.copytree(tiny_model, paths.model_dir)
    reference = synthetic_batch(0, 80)
    rows = []
    for k, (row, image) in enumerate(zip(reference.rows.itertuples(), reference.images)):
        rel = f"artifacts/ingest/images/{k}.png"
        (paths.root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(paths.root / rel)
        rows.append({"id": row.id, "split": "train", "image_path": rel, "text": row.text,
                     "label": row.label})
    paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(paths.manifest)
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "log"))
    return paths


def serve_shifted_traffic(model, context):
    """Score a batch with a new caption vocabulary through the served pyfunc; flush its capture."""
    traffic = synthetic_batch(1000, 80, "novel_vocabulary")
    encoded = []
    for image in traffic.images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    model.predict(context, pd.DataFrame({"image": encoded, "text": traffic.rows["text"]}))
    capture.flush()
    return traffic


def test_drift_since_judges_captured_traffic(served, tmp_path, tiny_model, monkeypatch):
    model, context = served
    paths = _traffic_project(tmp_path, tiny_model, monkeypatch)
    traffic = serve_shifted_traffic(model, context)
    params = parse_params({"drift": {"log_to_mlflow": False}})

    result = drift.run(params, paths, since="24h", out_dir=tmp_path / "since")

    assert result["n_current"] == len(traffic.rows) and result["n_reference"] == 80
    assert result["embedding_drifted"]["text"] is True and result["dataset_drift"] is True
    stats = json.loads((tmp_path / "since" / "stats.json").read_text())
    assert stats["notes"] == ["captured traffic was scored by mmguard-hateful_memes v7"]
    assert "label" not in stats["columns"]  # traffic has no labels: label drift is skipped
    assert stats["families"]["labels"]["skipped"] == "labels missing on a side"


def test_drift_since_without_traffic_and_with_another_tasks_traffic(tmp_path, tiny_model,
                                                                   monkeypatch):
    paths = _traffic_project(tmp_path, tiny_model, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(app, ["drift", "--since", "24h", "--root", str(paths.root),
                                 "--params", str(tmp_path / "none.yaml"), "--out",
                                 str(tmp_path / "empty")])
    assert result.exit_code == 2 and "not found" in result.output  # params file is required
    params_file = tmp_path / "params.yaml"
    params_file.write_text("drift:\n  log_to_mlflow: false\n")
    result = runner.invoke(app, ["drift", "--since", "24h", "--root", str(paths.root),
                                 "--params", str(params_file), "--out", str(tmp_path / "empty")])
    assert result.exit_code == 0, result.output
    assert capture.traffic_rows(parse_params({}), paths.root, "24h") == 0
    assert json.loads(result.stdout)["verdict"].startswith("too few rows to judge: the current "
                                                           "set has 0 readable rows")

    log = capture.CaptureLog(MonitoringParams(), str(tmp_path / "log"))
    files, images, texts, _ = _scored(3)
    log.record(files, images, texts, pd.DataFrame({"label": ["Hate"] * 3,
                                                    "prob_Hate": [0.9] * 3}))
    log.flush()
    assert capture.traffic_rows(parse_params({}), paths.root, "24h") == 3
    assert capture.traffic_rows(parse_params({}), paths.root, "0s") == 0
    result = runner.invoke(app, ["drift", "--since", "24h", "--root", str(paths.root),
                                 "--params", str(params_file)])
    assert result.exit_code == 1 and "not classes of task 'hateful_memes'" in result.output


@pytest.mark.slow  # a real `mmguard drift` child process: minutes on 2 busy cores
def test_drift_monitor_judges_served_traffic_only_when_there_is_some(served, tmp_path,
                                                                     tiny_model, monkeypatch):
    from pipeline.orchestration import incoming

    model, context = served
    paths = _traffic_project(tmp_path, tiny_model, monkeypatch)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("drift:\n  log_to_mlflow: false\n")
    params = parse_params({"drift": {"log_to_mlflow": False}})
    assert incoming.check_new_batches(params, paths, params_file) == \
        {"batches": {}, "drifted": [], "traffic": None}

    traffic = serve_shifted_traffic(model, context)

    checked = incoming.check_new_batches(params, paths, params_file)
    assert checked["drifted"] == []  # traffic brings no labels: it alerts, it does not retrain
    assert checked["traffic"]["dataset_drift"] is True
    assert checked["traffic"]["n_current"] == len(traffic.rows)
    reports = list((paths.artifacts / "monitoring" / "traffic").glob("*/drift.json"))
    assert len(reports) == 1
