"""The review queue on a planted capture log: exactly the rows the policy names (threshold band,
shadow disagreement, seeded QC sample, duplicates, the cap, earlier batches), every row
accounted for, and a batch folder Label Studio can import (tasks and config checked)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import jsonschema
import pandas as pd
import pytest
from PIL import Image

from pipeline.params import ReviewParams, parse_params
from pipeline.review import queue
from pipeline.review.policy import Threshold, select
from tests.review.planted import NOW, row, write_log
from tests.stores import sqlite_store

BINARY = ("not_hateful", "hateful")
SEVEN = ("True/Neutral", "Satire/Parody", "Misleading Content", "Imposter Content",
         "False Connection", "Manipulated Content", "Hate")


def _log_rows() -> tuple[list[dict], list[dict]]:
    """Served threshold 0.3, band 0.1: 0.25 and 0.38 are uncertain, 0.05 and 0.9 are not."""
    served = [
        row(1, 0.38, minutes_ago=50),   # uncertain, 0.08 from the threshold
        row(2, 0.25, minutes_ago=40),   # uncertain, 0.05 from it: first of the uncertain
        row(3, 0.90),                   # confident, but the shadow disagrees
        row(4, 0.21, image=2, text="caption 2", minutes_ago=10),  # a duplicate of row 2
        row(5, 0.33, score_id=None),    # uncertain, but not traceable to the log
        *[row(n, 0.02) for n in range(10, 30)],  # confident rows to sample from
        row(6, 0.95),                   # confident; the shadow agrees
    ]
    shadow = [row(3, 0.1, role="shadow", version="4"), row(6, 0.97, role="shadow", version="4")]
    return served, shadow


def _select(served, shadow, **settings):
    frame = pd.DataFrame(served)
    return select(frame, pd.DataFrame(shadow), BINARY, {"3": Threshold(0.3, "test")},
                  ReviewParams(**{"qc_rows": 3, **settings}))


def test_policy_picks_disagreement_then_uncertain_then_sample():
    served, shadow = _select(*_log_rows())[0], None
    assert list(served["reason"]) == ["disagreement", "uncertain", "uncertain", "sample",
                                      "sample", "sample"]
    assert list(served["score_id"][:3]) == ["req3:0", "req2:0", "req1:0"]
    assert served.loc[0, "shadow_prediction"] == "not_hateful"
    assert set(served["score_id"][3:]) <= {f"req{n}:0" for n in [*range(10, 30), 6]}


def test_policy_counts_every_row_once():
    picked, counts = _select(*_log_rows())
    assert counts["rows_read"] == 26 and counts["shadow_rows"] == 2
    assert counts["paired_rows"] == 2
    assert counts["picked"] == {"disagreement": 1, "uncertain": 2, "sample": 3}
    assert counts["duplicates"] == 1 and counts["no_score_id"] == 1
    assert counts["confident_not_sampled"] == 21 - 3
    assert counts["over_cap"] == {"disagreement": 0, "uncertain": 0, "sample": 0}


def test_the_qc_sample_is_seeded():
    rows = _log_rows()
    first = set(_select(*rows)[0]["score_id"])
    assert set(_select(*rows)[0]["score_id"]) == first
    assert set(_select(*rows, seed=1)[0]["score_id"]) != first


def test_the_cap_keeps_the_priority_order():
    picked, counts = _select(*_log_rows(), max_items=2)
    assert list(picked["reason"]) == ["disagreement", "uncertain"]
    assert counts["over_cap"] == {"disagreement": 0, "uncertain": 1, "sample": 3}


def test_rows_an_earlier_batch_queued_are_not_queued_again():
    served, shadow = _log_rows()
    first, _ = _select(served, shadow)
    picked, counts = select(pd.DataFrame(served), pd.DataFrame(shadow), BINARY,
                            {"3": Threshold(0.3, "test")}, ReviewParams(qc_rows=3),
                            set(first["key"]))
    assert counts["already_queued"] == 6 + 1  # the six picked and row 2's duplicate
    assert not set(picked["score_id"]) & set(first["score_id"])


def test_seven_classes_use_top1_and_margin():
    def probs(top, second):
        rest = (1 - top - second) / 5
        return dict(zip(SEVEN, [top, second, *[rest] * 5]))

    served = [row(1, probs(0.45, 0.20), classes=SEVEN),   # top-1 below 0.5, margin 0.25
              row(2, probs(0.55, 0.40), classes=SEVEN),   # margin 0.15 below 0.2
              row(3, probs(0.80, 0.10), classes=SEVEN)]   # confident
    picked, counts = select(pd.DataFrame(served), pd.DataFrame(columns=["score_id",
                            "prediction", "model_version"]), SEVEN, {},
                            ReviewParams(qc_rows=0))
    assert list(picked["score_id"]) == ["req2:0", "req1:0"]  # smallest margin first
    assert counts["confident_not_sampled"] == 1


def _params(**review):
    return parse_params({"review": {"qc_rows": 3, **review}})


TASK_SCHEMA = {
    "type": "object", "required": ["data", "predictions"],
    "properties": {
        "data": {"type": "object", "required": ["image", "text", "score_id"],
                 "properties": {"image": {"type": "string",
                                          "pattern": r"^/data/local-files/\?d=review/queued/"},
                                "text": {"type": "string"}, "score_id": {"type": "string"}}},
        "predictions": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["result", "score"],
            "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1},
                           "result": {"type": "array", "items": {
                               "type": "object",
                               "required": ["from_name", "to_name", "type", "value"],
                               "properties": {"type": {"const": "choices"},
                                              "value": {"type": "object",
                                                        "required": ["choices"]}}}}}}}}}


def register_versions(root, thresholds: list[str | None]) -> None:
    """Versions 1..n of mmguard-hateful_memes in the project's SQLite registry, each with its
    `operating.threshold` tag (None: no tag), as `mmguard register` tags them."""
    from mlflow import MlflowClient

    uri = sqlite_store(root / "mlflow.db")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("mmguard-hateful_memes")
    for threshold in thresholds:
        client.create_model_version("mmguard-hateful_memes", source=str(root / "model"),
                                    tags={} if threshold is None else
                                    {"operating.threshold": threshold})


@pytest.fixture
def batch(tmp_path):
    served, shadow = _log_rows()
    write_log(tmp_path / "artifacts/monitoring/log", served + shadow)
    register_versions(tmp_path, [None, "0.6", "0.3"])
    stats = queue.build_queue(_params(), tmp_path, "24h", now=NOW)
    return tmp_path, stats


def test_queue_writes_a_batch_label_studio_can_import(batch):
    root, stats = batch
    folder = root / "data/review/queued" / "20260110T120000Z"
    assert stats["batch"] == str(folder)
    tasks = json.loads((folder / "tasks.json").read_text())
    manifest = queue.read_manifest(folder)
    assert len(tasks) == len(manifest) == 6
    config = ET.fromstring((folder / "label_config.xml").read_text())
    names = {el.get("name"): el for el in config}
    assert names["image"].get("value") == "$image" and names["text"].get("value") == "$text"
    assert [c.get("value") for c in names["label"]] == list(BINARY)
    for task, line in zip(tasks, manifest):
        jsonschema.validate(task, TASK_SCHEMA)
        result = task["predictions"][0]["result"][0]
        # the pre-annotation names the config's controls and one of its choices
        assert (result["from_name"], result["to_name"]) == ("label", "image")
        assert result["value"]["choices"][0] in BINARY
        assert task["data"]["score_id"] == line["score_id"]
        assert line["reason"] in ("disagreement", "uncertain", "sample")
        with Image.open(folder / line["image"]) as image:
            assert image.format == "JPEG"
        assert task["data"]["image"].endswith(f"review/queued/{folder.name}/{line['image']}")


def test_queue_stats_account_for_every_row_and_name_the_threshold(batch):
    root, stats = batch
    assert stats["rows_read"] == 26
    assert sum(stats["picked"].values()) == 6
    assert stats["thresholds"]["3"] == {
        "threshold": 0.3, "source": "operating.threshold tag of mmguard-hateful_memes v3"}
    written = json.loads((root / "data/review/queued/20260110T120000Z/stats.json").read_text())
    assert written["picked"] == stats["picked"]


def test_a_second_run_over_the_same_window_queues_nothing_new(batch):
    root, _ = batch
    again = queue.build_queue(_params(), root, "24h", now=NOW)
    assert again["batch"] is None or not set(
        r["score_id"] for r in queue.read_manifest(root / again["batch"])) & {"req3:0"}
    assert again["already_queued"] >= 6


def test_without_a_registry_the_threshold_falls_back_to_half_and_says_so(tmp_path):
    served, shadow = _log_rows()
    write_log(tmp_path / "artifacts/monitoring/log", served + shadow)
    stats = queue.build_queue(_params(), tmp_path, "24h", now=NOW)
    assert stats["thresholds"]["3"]["threshold"] == 0.5
    assert stats["thresholds"]["3"]["source"].startswith("fallback 0.5: no registry at sqlite")
    # 0.38 and 0.25 are not within 0.1 of 0.5: only the disagreement and the sample
    assert stats["picked"] == {"disagreement": 1, "uncertain": 0, "sample": 3}
    assert not (tmp_path / "mlflow.db").exists()


def test_an_empty_window_writes_no_batch(tmp_path):
    stats = queue.build_queue(_params(), tmp_path, "24h", now=NOW)
    assert stats["batch"] is None and stats["rows_read"] == 0
    assert not (tmp_path / "data/review/queued").exists()
