"""The review loop end to end, through the real commands: traffic scored by `mmguard predict`
through a registered model (captured) → `mmguard review queue` (the version's operating
threshold from the registry) → labels returned as Label Studio writes them → `mmguard review
import` → the batch in data/incoming/ → `mmguard ingest` reads it as source `incoming`; and a
takedown of one image afterwards leaves no copy outside what ingest already read."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import calibration, registry
from pipeline.model import load_model
from pipeline.paths import Paths
from tests.data import fixtures as fx
from tests.pipeline.registry_fixtures import install_candidate, model_dirs, project_params
from tests.project import project_env
from tests.review.planted import export

pytestmark = pytest.mark.slow
ROWS = 40


def _run(root, *command) -> dict | list:
    env = {**project_env(), "MMGUARD_CAPTURE": "1"}  # the test session turns capture off
    done = subprocess.run(["mmguard", *command], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_served_traffic_to_reviewed_labels_to_ingest(tmp_path):
    root = tmp_path
    params = project_params(root)
    traffic = root / "traffic"
    traffic.mkdir()
    texts = [f"caption number {i}" for i in range(ROWS)]
    for i in range(ROWS):
        (traffic / f"{i}.png").write_bytes(fx.png_bytes(i, (96, 96)))
    lines = [{"image": f"{i}.png", "text": texts[i]} for i in range(ROWS)]
    lines.append(dict(lines[0]))  # the same post twice: queued once
    (traffic / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    # a registered version whose served threshold is the median of its scores on this traffic
    model = model_dirs(root, "hateful_memes", {"a": 1})["a"]
    images = [Image.open(traffic / f"{i}.png").convert("RGB") for i in range(ROWS)]
    scores = calibration.scale(load_model(model).predict_proba(images, texts), 1.0)[:, 1]
    threshold = float(np.median(scores))
    install_candidate(Paths(root), model, operating={
        "primary_fpr": 0.05, "points": [{"fpr_target": 0.05, "threshold": threshold}]})
    version = registry.register(params, Paths(root))["version"]
    settings = {"registry": {"tracking_uri": params.registry.tracking_uri},
                "ingest": {"sources": ["incoming"]},
                "review": {"band": float(np.ptp(scores)) / 4, "qc_rows": 3, "max_items": 15}}
    (root / "params.yaml").write_text(yaml.safe_dump(settings))

    _run(root, "predict", "--model", f"models:/mmguard-hateful_memes/{version}", "--input",
         str(traffic / "requests.jsonl"), "--output", str(root / "preds.parquet"))
    stats = json.loads(_run(root, "review", "queue", "--since", "1h"))
    assert stats["rows_read"] == ROWS + 1 and stats["duplicates"] == 1
    assert stats["thresholds"] == {version: {
        "threshold": pytest.approx(threshold),
        "source": f"operating.threshold tag of mmguard-hateful_memes v{version}"}}
    assert stats["picked"]["uncertain"] > 0
    assert sum(stats["picked"].values()) == 15  # the cap, in priority order:
    assert stats["picked"]["sample"] + stats["over_cap"]["sample"] == 3
    assert stats["over_cap"]["uncertain"] == 0 or stats["picked"]["sample"] == 0
    batch = root / "data/review/queued" / stats["batch"].rsplit("/", 1)[-1]
    tasks = json.loads((batch / "tasks.json").read_text())
    manifest = [json.loads(line) for line in (batch / "manifest.jsonl").open()]
    uncertain = [m for m in manifest if m["reason"] == "uncertain"]
    assert all(abs(m["probabilities"]["hateful"] - threshold) <= settings["review"]["band"]
               for m in uncertain)

    # reviewers label every task "hateful" except one they disagree on (a tie: quarantined)
    ids = [t["data"]["score_id"] for t in tasks]
    votes = {i: ["hateful"] for i in ids} | {ids[0]: ["hateful", "not_hateful"]}
    returned = root / "data/review/returned"
    returned.mkdir(parents=True)
    (returned / "labels.json").write_text(json.dumps(export(tasks, votes)))
    [imported] = json.loads(_run(root, "review", "import"))
    assert (imported["imported"], imported["quarantined"]) == (14, 1)

    _run(root, "ingest")
    ingested = json.loads((root / "artifacts/ingest/stats.json").read_text())
    assert ingested["per_source"]["incoming"] == {"rows_in": 14, "kept": 14, "quarantined": 0}
    assert ingested["per_class"]["hateful"] == 14

    # a takedown now: the capture log, the queue and the export lose the image; the incoming
    # batch ingest has read stays and is named with the reason
    sha = manifest[1]["image_sha256"]
    purged = json.loads(_run(root, "review", "purge", "--image-sha256", sha))
    assert purged["capture_log"]["rows"] >= 1 and purged["queued"]["rows"] == 1
    assert [p["place"].rsplit("/", 1)[-1] for p in purged["not_purged"]] == \
        [imported["name"]]
