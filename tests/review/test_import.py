"""Labels back: an export written the way Label Studio writes it becomes an incoming batch the
jsonl reader and ingest's label mapping accept; bad exports give a clear error or a quarantine
row with its reason, and every task is accounted for; the same export twice adds nothing."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import taxonomy
from pipeline.cli import app
from pipeline.errors import StageFailed
from pipeline.params import parse_params
from pipeline.review import importer, queue
from pipeline.sources import incoming
from tests.review.planted import NOW, export, row, write_log

PARAMS = parse_params({"review": {"qc_rows": 4, "band": 0.5}})  # every row is uncertain


@pytest.fixture
def queued(tmp_path):
    """Six queued rows (score_ids req1:0 .. req6:0)."""
    write_log(tmp_path / "artifacts/monitoring/log", [row(n, 0.4 + n / 100) for n in range(1, 7)])
    stats = queue.build_queue(PARAMS, tmp_path, "24h", now=NOW)
    folder = tmp_path / "data/review/queued" / "20260110T120000Z"
    assert stats["batch"] == str(folder)
    return tmp_path, json.loads((folder / "tasks.json").read_text()), folder


def _write(path, tasks) -> None:
    path.write_text(json.dumps(tasks, indent=2))


def test_an_export_as_label_studio_writes_it_becomes_an_incoming_batch(queued, tmp_path):
    root, tasks, _ = queued
    labels = {t["data"]["score_id"]: ["hateful"] for t in tasks[:3]}
    _write(tmp_path / "export.json", export(tasks, labels))
    stats = importer.import_export(PARAMS, root, tmp_path / "export.json")
    assert (stats["total"], stats["imported"], stats["quarantined"]) == (6, 6, 0)
    batch = root / "data/incoming" / stats["name"]
    assert stats["incoming_batch"] == str(batch) and stats["name"].startswith("review-")
    records = list(incoming.read_batch(batch, "hateful_memes"))
    assert len(records) == 6 and {r.split for r in records} == {"train"}
    by_id = {r.source_id.split("/", 1)[1]: r for r in records}
    assert set(by_id) == {t["data"]["score_id"] for t in tasks}  # the capture ids kept
    for score_id, record in by_id.items():
        want = "hateful" if score_id in labels else \
            next(t for t in tasks if t["data"]["score_id"] == score_id)[
                "predictions"][0]["result"][0]["value"]["choices"][0]
        assert taxonomy.map_label("incoming", record.raw_label, "hateful_memes")[0] == \
            taxonomy.class_names("hateful_memes").index(want)
        with Image.open(record.image_path) as image:  # the reviewed thumbnail, a real image
            image.load()
            assert image.format == "JPEG"
    report = root / "data/review/imports" / stats["name"]
    assert json.loads((report / "stats.json").read_text())["imported"] == 6
    assert (report / "quarantine.jsonl").read_text() == ""


def test_the_same_export_twice_adds_no_rows(queued, tmp_path):
    root, tasks, _ = queued
    _write(tmp_path / "export.json", export(tasks, {}))
    first = importer.import_export(PARAMS, root, tmp_path / "export.json")
    again = importer.import_export(PARAMS, root, tmp_path / "export.json")
    assert (again["imported"], again["already_imported"], again["quarantined"]) == (0, 6, 0)
    assert again["incoming_batch"] is None
    assert [b.name for b in incoming.batches(root / "data/incoming")] == [first["name"]]


def test_bad_tasks_are_quarantined_with_their_reason(queued, tmp_path):
    root, tasks, folder = queued
    ids = [t["data"]["score_id"] for t in tasks]
    votes = {ids[0]: ["offensive"],                       # not a class of the task
             ids[1]: ["hateful", "not_hateful"],          # two reviewers, a tie
             ids[2]: ["hateful", "hateful", "not_hateful"],  # a majority
             ids[3]: [("cancel",)],                       # skipped by the reviewer
             ids[5]: ["hateful", "hateful"]}              # agree
    tasks_out = export(tasks, votes)
    image = folder / queue.read_manifest(folder)[4]["image"]
    image.unlink()                                        # ids[4]: its image is gone
    stranger = json.loads(json.dumps(tasks_out[5]))
    stranger["id"], stranger["data"]["score_id"] = 99, "never-queued:0"
    duplicate = json.loads(json.dumps(tasks_out[5]))
    duplicate["id"] = 100
    no_id = json.loads(json.dumps(tasks_out[5]))
    no_id["id"] = 101
    del no_id["data"]["score_id"]
    _write(tmp_path / "bad.json", tasks_out + [stranger, duplicate, no_id])
    stats = importer.import_export(PARAMS, root, tmp_path / "bad.json")
    assert stats["total"] == 9
    assert stats["imported"] + stats["already_imported"] + stats["quarantined"] == 9
    assert stats["imported"] == 2  # the majority and the agreeing pair
    assert stats["quarantined_by_reason"] == {
        "unknown_label": 1, "reviewer_tie": 1, "no_label": 1, "missing_image": 1,
        "never_queued": 1, "duplicate_task": 1, "missing_score_id": 1}
    assert stats["cancelled_annotations"] == 1
    # three multi-annotated tasks: one in full agreement, one majority, one tie
    assert stats["multi_annotated"] == 3 and stats["agreement"] == pytest.approx(1 / 3)
    assert stats["labels"] == {"hateful": 2}
    rows = [json.loads(line) for line in
            (root / "data/review/imports" / stats["name"] / "quarantine.jsonl").open()]
    by_reason = {r["reason"]: r for r in rows}
    assert "offensive" in by_reason["unknown_label"]["detail"]
    assert by_reason["reviewer_tie"]["votes"] == {"hateful": 1, "not_hateful": 1}
    assert by_reason["missing_image"]["score_id"] == ids[4]
    assert by_reason["never_queued"]["task_id"] == 99


@pytest.mark.parametrize("content, says", [
    ('[{"id": 1, "data": {"score_id": "req1:0"}, "annotations": [{"id": 1, "res',
     "truncated"),
    ('{"id": 1}', "a list of tasks"),
    ("", "invalid JSON"),
])
def test_an_export_that_is_not_whole_json_stops_with_a_clear_error(queued, tmp_path, content,
                                                                   says):
    root, _, _ = queued
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(StageFailed, match=says):
        importer.import_export(PARAMS, root, tmp_path / "bad.json")
    assert not (root / "data/incoming").exists() and not (root / "data/review/imports").exists()


def test_returned_exports_are_imported_once_and_moved_to_done(queued):
    root, tasks, _ = queued
    returned = root / "data/review/returned"
    returned.mkdir(parents=True)
    _write(returned / "a.json", export(tasks[:3], {}))
    _write(returned / "b.json", export(tasks[3:], {}))
    result = CliRunner().invoke(app, ["review", "import", "--root", str(root), "--params",
                                      str(_params_file(root))])
    assert result.exit_code == 0, result.output
    assert [r["imported"] for r in json.loads(result.output)] == [3, 3]
    assert sorted(p.name for p in (root / "data/review/done").iterdir()) == ["a.json", "b.json"]
    assert not list(returned.iterdir())
    (returned / "c.json").write_text("[{")
    result = CliRunner().invoke(app, ["review", "import", "--root", str(root), "--params",
                                      str(_params_file(root))])
    assert result.exit_code == 1 and "invalid JSON" in result.output
    assert (returned / "c.json").exists()  # left for a person to look at


def _params_file(root):
    import yaml

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"review": {"qc_rows": 4, "band": 0.5}}))
    return path
