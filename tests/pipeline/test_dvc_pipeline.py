"""The laptop path end to end, as the README spells it: `mmguard fetch`, `dvc add data`, `dvc repro`
(every DVC stage), `mmguard register`, `mmguard promote`, on a small embedded config in a throwaway
copy of the project, with real DVC and MLflow. (`mmguard run` drives the same stages through
Airflow; tests/dags/test_retrain_loop.py runs it.)"""
import json

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests.project import SMALL, make_project, run

pytestmark = pytest.mark.slow

STAGES = ["ingest", "dedupe", "validate", "shard", "train", "evaluate", "checks", "drift"]


def _ran(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("project"), SMALL)
    output = "".join(run(command, root).stdout for command in (
        ["mmguard", "fetch", "--source", "synthetic"], ["dvc", "add", "data"], ["dvc", "repro"],
        ["mmguard", "register"], ["mmguard", "promote"]))
    return root, output


def _json(root, relative):
    return json.loads((root / relative).read_text())


def test_main_job_runs_every_stage_and_conserves_rows(project):
    root, output = project
    assert _ran(output) == STAGES
    ingest = _json(root, "artifacts/ingest/stats.json")
    dedupe = _json(root, "artifacts/dedupe/stats.json")
    assert ingest["rows_in"] == ingest["kept"] + ingest["quarantined"]
    assert dedupe["rows_in"] == ingest["kept"]
    dropped = dedupe["duplicates_exact"] + dedupe["duplicates_near"]
    assert dedupe["rows_in"] == dedupe["kept"] + dropped + dedupe["quarantined"]
    # The embedded data plants duplicates and broken files, so both paths are exercised.
    assert dropped > 0 and ingest["quarantined"] > 0
    manifest = pd.read_parquet(root / "artifacts/dedupe/manifest.parquet")
    assert len(manifest) == dedupe["kept"] and manifest["id"].is_unique
    sizes = _json(root, "artifacts/shards/sizes.json")
    assert sum(info["samples"] for info in sizes["splits"].values()) == len(manifest)
    predictions = pd.read_parquet(root / "artifacts/evaluate/predictions.parquet")
    assert (predictions["split"] == "test").sum() == sizes["splits"]["test"]["samples"]
    assert _json(root, "artifacts/checks/stats.json")["passed"] is True
    assert "dataset_drift" in _json(root, "artifacts/drift/drift.json")
    assert (root / "artifacts/validate/data_docs/index.html").exists()
    assert (root / "artifacts/drift/report.html").exists()


def test_the_first_model_is_registered_and_becomes_champion(project):
    root, output = project
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("mmguard-hateful_memes", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["gate.decision"] == "promote"
    assert "PROMOTED to @champion" in output


def test_second_repro_does_nothing(project):
    root, _ = project
    again = run(["dvc", "repro"], root)
    assert _ran(again.stdout) == []


def test_speed_knobs_and_an_unrelated_module_change_nothing_a_used_module_reruns(project):
    root, _ = project
    before = (root / "params.yaml").read_text()
    params = yaml.safe_load(before)
    params["train"] |= {"num_workers": 3, "device": "cpu"}
    params["ingest"]["workers"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "changed" not in run(["dvc", "status"], root).stdout
    (root / "params.yaml").write_text(before)
    # text.py normalises captions for ingest and dedupe's text keys: both must re-run, while
    # stages that never import it stay clean
    text = root / "pipeline" / "text.py"
    original = text.read_text()
    text.write_text(original + "\n# edited\n")
    status = run(["dvc", "status"], root).stdout
    text.write_text(original)
    assert "ingest:" in status and "dedupe:" in status
    assert "train:" not in status and "drift:" not in status


def test_changing_a_shard_param_reruns_shard_and_only_what_follows(project):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["shard"]["image_short_side"] = 128
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], root).stdout
    assert "shard:" in status and "ingest:" not in status and "train:" not in status
    changed = run(["dvc", "repro", "shard"], root)
    assert _ran(changed.stdout) == ["shard"]
    after = run(["dvc", "status"], root).stdout
    # Downstream stages now see new shards; upstream ones stay clean.
    assert "train:" in after and "ingest:" not in after and "shard:" not in after
