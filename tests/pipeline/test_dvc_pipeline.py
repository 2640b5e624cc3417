"""The whole data pipeline under real DVC on a small embedded config."""
import json

import pandas as pd
import pytest
import yaml

from tests.project import SMALL, make_project, run

pytestmark = pytest.mark.slow

DATA_STAGES = ["ingest", "dedupe", "validate", "shard"]


def _ran(output: str) -> list[str]:
    return [stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("project"), SMALL)
    run(["mmguard", "fetch", "--source", "synthetic"], root)
    run(["dvc", "add", "-q", "data"], root)
    first = run(["dvc", "repro", *DATA_STAGES], root)
    return root, first.stdout


def test_cold_repro_runs_every_data_stage_and_conserves_rows(project):
    root, output = project
    assert _ran(output) == DATA_STAGES
    ingest = json.loads((root / "artifacts/ingest/stats.json").read_text())
    dedupe = json.loads((root / "artifacts/dedupe/stats.json").read_text())
    assert ingest["rows_in"] == ingest["kept"] + ingest["quarantined"]
    assert dedupe["rows_in"] == ingest["kept"]
    dropped = dedupe["duplicates_exact"] + dedupe["duplicates_near"]
    assert dedupe["rows_in"] == dedupe["kept"] + dropped + dedupe["quarantined"]
    # The embedded data plants duplicates and broken files, so both paths are exercised.
    assert dropped > 0 and ingest["quarantined"] > 0
    manifest = pd.read_parquet(root / "artifacts/dedupe/manifest.parquet")
    assert len(manifest) == dedupe["kept"] and manifest["id"].is_unique
    sizes = json.loads((root / "artifacts/shards/sizes.json").read_text())
    assert sum(info["samples"] for info in sizes["splits"].values()) == len(manifest)


def test_second_repro_does_nothing(project):
    root, _ = project
    again = run(["dvc", "repro", *DATA_STAGES], root)
    assert _ran(again.stdout) == []


def test_changing_a_shard_param_reruns_only_shard(project):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["shard"]["image_short_side"] = 128
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro", *DATA_STAGES], root)
    assert _ran(changed.stdout) == ["shard"]
