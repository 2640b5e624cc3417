"""The two DAGs run for real (`dag.test()` on SQLite, real DVC, MLflow, Evidently) in one small
project, in the order the loop runs in production:

1. a retrain from scratch: every stage task succeeds, the first model becomes champion;
2. an incoming batch like the training data: the drift monitor records it and stops;
3. a shifted batch: the monitor emits the drift Asset event, which queues the retrain;
4. the retrain that event schedules: it ingests the batch, and a gate made unreachable refuses
   the challenger, yet the run ends green with the champion unchanged and the reasons tagged;
5. traffic the champion scores after that: `mmguard drift --since` judges it against the
   champion's training reference, not the workspace's manifest the refused retrain moved on.

Drift runs with the shipped `drift` params throughout. One project and one metadata DB serve
every assertion; this is the expensive DAG tier (`slow`).
"""
from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from tests.dags.airflow_child import run_child
from tests.project import SMALL, make_project, project_env, run

# The module's fixture runs four DAG runs on the pretrained default (about 12 minutes on 2 idle
# cores) inside the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

STAGES = ["ingest", "dedupe", "validate", "shard", "train", "evaluate", "checks", "drift"]
MODEL = "mmguard-hateful_memes"

RUN_DAG = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from sqlalchemy import select
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag(sys.argv[1]).test(run_conf=json.loads(sys.argv[2]))
    with create_session() as session:
        events = [{"asset": name, "extra": extra} for name, extra in session.execute(
            select(AssetModel.name, AssetEvent.extra).join(AssetEvent.asset))]
        queued = [{"asset": name, "dag_id": dag_id} for name, dag_id in session.execute(
            select(AssetModel.name, AssetDagRunQueue.target_dag_id)
            .join(AssetModel, AssetModel.id == AssetDagRunQueue.asset_id))]
    print("RESULT " + json.dumps({"state": str(run.state), "events": events, "queued": queued,
          "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}))
''')


def _batch(root: Path, name: str, rows: list[dict], shift: bool) -> None:
    """A batch in the jsonl layout made from synthetic test items; `shift` brightens and enlarges
    the images and stretches every caption word."""
    source = root / "data/synthetic/hateful_memes"
    dest = root / "data/incoming" / name
    (dest / "img").mkdir(parents=True)
    lines = []
    for row in rows:
        image = Image.open(source / row["img"]).convert("RGB")
        if shift:
            pixels = np.clip(np.asarray(image, dtype=np.int16) + 90, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels).resize((image.width * 2, image.height * 3))
        image.save(dest / "img" / (Path(row["img"]).stem + ".png"))
        text = " ".join(w * 3 for w in row["text"].split()) if shift else row["text"]
        lines.append(json.dumps({"id": row["id"], "img": f"img/{Path(row['img']).stem}.png",
                                 "text": text, "label": row["label"]}))
    (dest / "train.jsonl").write_text("\n".join(lines) + "\n")


def _test_rows(root: Path) -> list[dict]:
    """Up to 40 clean test items of the synthetic source (its planted defects left out)."""
    folder = root / "data/synthetic/hateful_memes"
    planted = json.loads((folder / "planted.json").read_text())
    defects = {d["id"] for d in planted["defects"]}
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    return [r for r in rows if r["id"] not in defects][:40]


def _set_params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def loop(tmp_path_factory, migrated_db):
    base = tmp_path_factory.mktemp("loop")
    # The source is chosen by the DAG's param, not by params.yaml: start from another one.
    # The shipped drift params: the verdict is calibrated per comparison, so a 36-row batch
    # needs no threshold of its own.
    root = make_project(base / "project", {**SMALL, "ingest": {"sources": ["hateful_memes"]}})
    home = base / "airflow_home"
    env = {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False", "OMP_NUM_THREADS": "1"}
    steps = {}

    def dag(name: str, dag_id: str, conf: dict, **kwargs) -> None:
        steps[name] = run_child(RUN_DAG, root, home, dag_id, json.dumps(conf), timeout=1500,
                                extra_env=env, **kwargs)

    dag("first", "mmguard_retrain", {"source": ["synthetic"]}, db=migrated_db)
    rows = _test_rows(root)
    steps["batch_rows"] = len(rows)
    lock = (root / "dvc.lock").read_text()
    _batch(root, "2025-01-01-similar", rows, shift=False)
    dag("similar", "mmguard_drift_monitor", {})
    _batch(root, "2025-01-02-shifted", rows, shift=True)
    dag("shifted", "mmguard_drift_monitor", {})
    steps["lock_unchanged_by_monitor"] = lock == (root / "dvc.lock").read_text()
    # Nothing the new model can do passes this gate: the challenger must be refused.
    _set_params(root, registry={"gate": {"min_auroc": 1.0, "min_top1": 1.0, "min_top2": 1.0,
                                         "regression_tolerance": 0.0}})
    dag("retrain", "mmguard_retrain", {})
    steps["traffic"] = _serve_and_judge_traffic(root, rows)
    return root, steps


def _serve_and_judge_traffic(root: Path, rows: list[dict]) -> dict:
    """After the refused retrain: the champion scores the undrifted test items as traffic
    (`mmguard predict`, captured), then `mmguard drift --since 1h` judges that traffic."""
    source = root / "data/synthetic/hateful_memes"
    requests = root / "traffic.jsonl"
    requests.write_text("".join(json.dumps({"image": str(source / row["img"]),
                                            "text": row["text"]}) + "\n" for row in rows))
    env = {**project_env(), "MMGUARD_CAPTURE": "1"}  # the test session turns capture off
    for command in (["mmguard", "predict", "--model", f"models:/{MODEL}@champion", "--input",
                     str(requests), "--output", str(root / "traffic-predictions.parquet"),
                     "--images-dir", str(source)],
                    ["mmguard", "drift", "--since", "1h", "--out", str(root / "traffic-drift")]):
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((root / "traffic-drift" / "drift.json").read_text())


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_first_retrain_runs_every_stage_as_its_own_task(loop):
    root, steps = loop
    first = steps["first"]
    assert first["state"] == "success", first["log"][-5000:]
    assert {t: first["tasks"][t] for t in STAGES} == dict.fromkeys(STAGES, "success")
    assert (first["tasks"]["promote"], first["tasks"]["keep_champion"]) == ("success", "skipped")
    for stage in STAGES:  # each task ran exactly its own stage
        assert f"$ dvc --wait-for-lock repro --single-item {stage}" in first["log"]
    assert first["log"].count("Running stage 'train'") == 1
    assert "no default DVC remote: nothing to push" in first["log"]
    assert "mmguard summary" in first["log"]
    assert str(_client(root).get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert (root / "artifacts/monitoring/reference/manifest.parquet").exists()


def test_source_param_switches_fetch_and_ingest(loop):
    root, steps = loop
    assert "params.yaml ingest.sources := ['synthetic']" in steps["first"]["log"]
    sources = set(pd.read_parquet(root / "artifacts/ingest/manifest.parquet")["source"])
    assert "synthetic" in sources and "hateful_memes" not in sources


def test_same_model_registered_again_is_the_same_version(loop):
    root, _ = loop
    def versions() -> set[str]:
        return {str(v.version) for v in _client(root).search_model_versions(f"name='{MODEL}'")}

    before = versions()
    again = json.loads(run(["mmguard", "register"], root).stdout)
    assert again["created"] is False and again["version"] in before
    assert versions() == before


def test_undrifted_batch_is_recorded_and_triggers_nothing(loop):
    root, steps = loop
    similar = steps["similar"]
    assert similar["state"] == "success", similar["log"][-5000:]
    assert (similar["tasks"]["no_drift"], similar["tasks"]["announce_drift"]) == \
        ("success", "skipped")
    assert similar["events"] == [] and similar["queued"] == []
    record = root / "artifacts/monitoring/incoming/2025-01-01-similar/drift/drift.json"
    assert json.loads(record.read_text())["dataset_drift"] is False
    assert (record.parent / "report.html").exists()


def test_drifted_batch_emits_the_asset_event_that_queues_the_retrain(loop):
    root, steps = loop
    shifted = steps["shifted"]
    assert shifted["state"] == "success", shifted["log"][-5000:]
    assert shifted["tasks"]["announce_drift"] == "success"
    assert shifted["events"] == [{"asset": "mmguard_drift_detected",
                                  "extra": {"batches": ["2025-01-02-shifted"]}}]
    assert shifted["queued"] == [{"asset": "mmguard_drift_detected", "dag_id": "mmguard_retrain"}]
    # The batch checked before is not checked again.
    assert "batch 2025-01-01-similar" not in shifted["log"]


def test_drift_monitor_runs_no_dvc_stage(loop):
    _, steps = loop
    for name in ("similar", "shifted"):
        assert "Running stage" not in steps[name]["log"]
        assert "$ dvc" not in steps[name]["log"]
    assert steps["lock_unchanged_by_monitor"]


def test_triggered_retrain_ingests_the_batch(loop):
    root, steps = loop
    retrain = steps["retrain"]
    assert retrain["tasks"]["ingest"] == "success", retrain["log"][-5000:]
    manifest = pd.read_parquet(root / "artifacts/ingest/manifest.parquet")
    batch = manifest[manifest["source"] == "incoming"]
    assert len(batch) == 2 * steps["batch_rows"]  # both batches are training data now
    assert set(batch["source_id"].str.split("/").str[0]) == {"2025-01-01-similar",
                                                             "2025-01-02-shifted"}


def test_refused_challenger_ends_green_with_champion_unchanged(loop):
    root, steps = loop
    retrain = steps["retrain"]
    assert retrain["state"] == "success", retrain["log"][-5000:]
    assert (retrain["tasks"]["gate"], retrain["tasks"]["promote"],
            retrain["tasks"]["keep_champion"]) == ("success", "skipped", "success")
    assert (retrain["tasks"]["push"], retrain["tasks"]["summary"]) == ("success", "success")
    client = _client(root)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    decision = json.loads((root / "artifacts/gate/decision.json").read_text())
    assert decision["decision"] == "keep" and decision["champion_seen"] == "1"
    challenger = client.get_model_version(MODEL, decision["challenger"])
    assert str(challenger.version) != "1"
    for reason in decision["reasons"]:
        assert reason in retrain["log"]
    assert any(reason in " ".join(challenger.tags.values()) for reason in decision["reasons"])


def test_traffic_after_the_refused_retrain_is_judged_against_the_champions_reference(loop):
    root, steps = loop
    traffic = steps["traffic"]
    snapshot = "artifacts/monitoring/reference/manifest.parquet"
    assert traffic["reference"] == f"the champion's training reference {snapshot}"
    # The workspace's train split grew by the shifted batch; the champion never saw it.
    champion_rows = len(pd.read_parquet(root / snapshot))
    manifest = pd.read_parquet(root / "artifacts/dedupe/manifest.parquet")
    assert traffic["n_reference"] == champion_rows < int((manifest["split"] == "train").sum())
    assert traffic["n_current"] == steps["batch_rows"]
    assert traffic["dataset_drift"] is False and traffic["dropped_rows"] == 0
