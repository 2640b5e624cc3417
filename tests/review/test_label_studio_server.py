"""A real Label Studio (1.23, from `.venv-labelstudio`, built by `make label-studio`) on
127.0.0.1, driven through its REST API: a project with our labelling config, local-files
storage serving the queued images, our tasks.json imported (pre-annotations included), reviewers'
annotations posted (one agreeing pair, one tie, one cancelled, one label per other task), the
project exported as JSON and that export imported back by `mmguard review import`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from pipeline.params import parse_params
from pipeline.review import importer, queue
from tests.pipeline.registry_fixtures import free_port, start_server, stop_server
from tests.review.planted import NOW, row, write_log

pytestmark = pytest.mark.slow
LABEL_STUDIO = Path(__file__).resolve().parents[2] / ".venv-labelstudio/bin/label-studio"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
PARAMS = parse_params({"review": {"band": 0.5, "qc_rows": 0}})


@pytest.fixture
def server(tmp_path):
    if not LABEL_STUDIO.exists():
        pytest.fail(f"{LABEL_STUDIO} is missing: run `make label-studio` (make test-slow does)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HOST"} | {
        "DO_NOT_TRACK": "true", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",  # no error reports leave the machine
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "label-studio"),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path / "data"),
        "LABEL_STUDIO_USERNAME": "reviewer@example.com",
        "LABEL_STUDIO_PASSWORD": "review-password-1",
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
    process = start_server([str(LABEL_STUDIO), "start", "--no-browser", "--internal-host",
                            "127.0.0.1", "--port", str(port)],
                           f"http://127.0.0.1:{port}/health", tmp_path / "label-studio.log",
                           env, timeout_s=300)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def _api(base: str, method: str, path: str, **kwargs):
    response = requests.request(method, base + path, timeout=60,
                                headers={"Authorization": f"Token {TOKEN}"}, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text[:500])
    return response.json() if response.content else None


def test_tasks_go_through_a_real_label_studio_and_come_back(server, tmp_path):
    root = tmp_path
    write_log(root / "artifacts/monitoring/log", [row(n, 0.45) for n in range(1, 6)])
    stats = queue.build_queue(PARAMS, root, "24h", now=NOW)
    batch = Path(stats["batch"])
    config = (batch / "label_config.xml").read_text()
    project = _api(server, "POST", "/api/projects",
                   json={"title": "mmguard review", "label_config": config})
    _api(server, "POST", "/api/storages/localfiles",
         json={"project": project["id"], "path": str(batch / "images"), "title": "queued",
               "use_blob_urls": False})
    tasks = json.loads((batch / "tasks.json").read_text())
    imported = _api(server, "POST", f"/api/projects/{project['id']}/import", json=tasks)
    assert (imported["task_count"], imported["prediction_count"]) == (5, 5)

    listed = _api(server, "GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
    by_score = {t["data"]["score_id"]: t for t in listed}
    assert set(by_score) == {t["data"]["score_id"] for t in tasks}
    # Label Studio serves the queued image at the task's URL: the same bytes
    first = tasks[0]["data"]
    served = requests.get(server + first["image"], timeout=30,
                          headers={"Authorization": f"Token {TOKEN}"})
    assert served.status_code == 200
    assert served.content == (batch / "images" / f"{first['image_sha256']}.jpg").read_bytes()

    def annotate(score_id, label=None, cancelled=False):
        result = [] if label is None else [{"from_name": "label", "to_name": "image",
                                            "type": "choices", "value": {"choices": [label]}}]
        _api(server, "POST", f"/api/tasks/{by_score[score_id]['id']}/annotations",
             json={"result": result, "was_cancelled": cancelled})

    ids = sorted(by_score)
    annotate(ids[0], "hateful"), annotate(ids[0], "hateful")       # agree
    annotate(ids[1], "hateful"), annotate(ids[1], "not_hateful")   # tie
    annotate(ids[2], cancelled=True)                               # skipped
    annotate(ids[3], "not_hateful")
    annotate(ids[4], "hateful")
    exported = requests.get(f"{server}/api/projects/{project['id']}/export?exportType=JSON",
                            headers={"Authorization": f"Token {TOKEN}"}, timeout=60)
    assert exported.status_code == 200
    (root / "export.json").write_bytes(exported.content)

    result = importer.import_export(PARAMS, root, root / "export.json")
    assert (result["total"], result["imported"], result["quarantined"]) == (5, 3, 2)
    assert result["quarantined_by_reason"] == {"reviewer_tie": 1, "no_label": 1}
    assert result["cancelled_annotations"] == 1
    assert result["multi_annotated"] == 2 and result["agreement"] == 0.5
    lines = [json.loads(x) for x in
             (Path(result["incoming_batch"]) / "train.jsonl").read_text().splitlines()]
    assert {x["score_id"]: x["label"] for x in lines} == {
        ids[0]: "hateful", ids[3]: "not_hateful", ids[4]: "hateful"}
