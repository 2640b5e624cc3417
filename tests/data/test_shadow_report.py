"""`mmguard shadow-report` on a planted capture log: served and shadow answers to the same rows,
written by the real capture writer, give known agreement, score shift and disagreements."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.monitoring import capture, shadow
from pipeline.params import MonitoringParams, parse_params

SERVED_P = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.3, 0.7]  # p(hateful), 10 served rows
SHADOW_P = [0.1, 0.6, 0.55, 0.45, 0.2, 0.7, 0.9, 0.95]  # the shadow answered the first 8
# |shift| = 0, .4, .25, .05, .4, 0, .1, .05; labels flip on rows 1, 2 (to hateful), 4 (back)


def scored(p_hateful: list[float]) -> tuple[list, list, list, pd.DataFrame]:
    n = len(p_hateful)
    images = [Image.new("RGB", (40, 40), (30 * k % 255, 90, 20)) for k in range(n)]
    p = np.array(p_hateful)
    output = pd.DataFrame({"label": np.where(p > 0.5, "hateful", "not_hateful"),
                           "label_index": (p > 0.5).astype(int),
                           "prob_not_hateful": 1 - p, "prob_hateful": p})
    return [f"image-{k}".encode() for k in range(n)], images, [f"text {k}" for k in range(n)], \
        output


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """The log as a served process with shadow scoring writes it, plus one part from before
    rows had roles and score ids."""
    folder = tmp_path / "log"
    monkeypatch.setenv(capture.ENV_URI, str(folder))
    writer = capture.CaptureLog(MonitoringParams(), str(folder))
    writer.record(*scored(SERVED_P), {"name": "m", "version": "1"}, capture.SERVED, "req")
    served_inputs, images, texts, _ = scored(SERVED_P)
    writer.record(served_inputs[:8], images[:8], texts[:8], scored(SHADOW_P)[3],
                  {"name": "m", "version": "2"}, capture.SHADOW, "req")
    writer.flush()
    old = pd.read_parquet(next(folder.rglob("part-*.parquet"))).head(3) \
        .drop(columns=["role", "score_id"])
    old.to_parquet(next(folder.glob("date=*")) / "part-000000000000-1-0.parquet")
    return tmp_path


def test_report_numbers(planted):
    params = parse_params({})
    report = shadow.report(params, planted, "24h")

    assert report["served_rows"] == 13 and report["shadow_rows"] == 8
    assert report["paired_rows"] == 8 and report["served_rows_without_shadow"] == 5
    assert report["versions"] == [{"served": "1", "shadow": "2", "rows": 8}]
    assert report["agreement"] == pytest.approx(5 / 8)
    shift = report["score_shift"]
    assert shift["of"] == "p(hateful)"
    assert shift["mean"] == pytest.approx(1.25 / 8)
    assert shift["p95"] == pytest.approx(0.4) and shift["max"] == pytest.approx(0.4)
    assert [(d["served"], d["shadow"], d["rows"]) for d in report["disagreements"]] == [
        ("not_hateful", "hateful", 2), ("hateful", "not_hateful", 1)]
    flagged = report["disagreements"][0]["examples"]
    assert [e["score_id"] for e in flagged] == ["req:1", "req:2"]
    assert [e["text"] for e in flagged] == ["text 1", "text 2"]

    # the same through the command line
    result = CliRunner().invoke(app, ["shadow-report", "--since", "24h", "--params",
                                      str(write_params(planted)), "--root", str(planted)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == report


def write_params(folder):
    path = folder / "params.yaml"
    path.write_text("{}\n")
    return path


def test_shadow_rows_for_the_gate_and_traffic_readers_see_served_rows_only(planted):
    params = parse_params({})
    assert shadow.shadow_rows(params, planted) == 8
    assert shadow.shadow_rows(params, planted, "24h", version="2") == 8
    assert shadow.shadow_rows(params, planted, "24h", version="1") == 0
    assert shadow.shadow_rows(params, planted, "0s") == 0
    cutoff = datetime(2000, 1, 1, tzinfo=timezone.utc)
    uri = capture.log_location(params.monitoring, planted)
    traffic = capture.read_log(uri, cutoff)
    assert len(traffic) == 13 and set(traffic["role"]) == {"served"}
    assert len(capture.read_log(uri, cutoff, columns=["score_id"], roles=None)) == 21
    assert capture.traffic_rows(params, planted, "24h") == 13


def test_an_empty_window_reports_nothing_to_compare(tmp_path, monkeypatch):
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "none"))
    report = shadow.report(parse_params({}), tmp_path, "24h")
    assert report["paired_rows"] == 0 and report["agreement"] is None
    assert report["score_shift"] is None and report["disagreements"] == []
    result = CliRunner().invoke(app, ["shadow-report", "--since", "yesterday", "--params",
                                      str(write_params(tmp_path)), "--root", str(tmp_path)])
    assert result.exit_code == 1 and "expected a number and a unit" in result.output
