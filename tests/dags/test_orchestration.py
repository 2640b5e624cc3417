"""The pieces the DAGs are made of, without Airflow: the dvc.yaml graph reader, the per-stage
limits in params, and the one switch that picks the sources."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline.orchestration import dvc_graph
from pipeline.orchestration.sources import choose, write_ingest_sources
from pipeline.params import ParamsError, load_params, parse_params
from tests.dags.airflow_child import REPO


def test_inputs_to_pull_are_the_dvc_managed_deps_only():
    assert dvc_graph.inputs_to_pull(REPO, "ingest") == ["data"]  # data.dvc, not the code deps
    # the embed stage's feature cache travels like the shards
    assert set(dvc_graph.inputs_to_pull(REPO, "train")) == {"artifacts/embeddings",
                                                             "artifacts/shards"}
    # mlflow_run.json is cached so evaluate on another worker can pull it; the clean manifest
    # carries the grouping columns evaluate slices by
    assert set(dvc_graph.inputs_to_pull(REPO, "evaluate")) == {
        "artifacts/embeddings", "artifacts/shards", "artifacts/model",
        "artifacts/train/mlflow_run.json", "artifacts/dedupe/manifest.parquet"}


def test_foreach_stages_are_refused_clearly(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"many": {
        "foreach": [1, 2], "do": {"cmd": "echo ${item}"}}}}))
    with pytest.raises(ValueError, match="many.*foreach/matrix"):
        dvc_graph.read_stages(tmp_path)


def test_stage_limits_fall_back_to_the_section_defaults():
    settings = parse_params({"airflow": {"retries": 3, "execution_timeout_min": 10,
                                         "stages": {"train": {"retries": 0}}}}).airflow
    assert settings.for_stage("train") == (0, 10)
    assert settings.for_stage("ingest") == (3, 10)
    with pytest.raises(ParamsError, match="airflow.stages.train.retries"):
        parse_params({"airflow": {"stages": {"train": {"retries": -1}}}})


@pytest.fixture
def project(tmp_path):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_sources_default_to_params_and_incoming_batches_join(project):
    params = project / "params.yaml"
    assert choose([], params, project) == list(load_params(params).ingest.sources)
    assert choose(["hateful_memes", "coco"], params, project) == ["hateful_memes", "coco"]
    batch = project / "data/incoming/b1"
    batch.mkdir(parents=True)
    (batch / "train.jsonl").write_text(json.dumps({"id": "1", "img": "img/1.png", "text": "t",
                                                   "label": 0}) + "\n")
    assert choose(["hateful_memes"], params, project) == ["hateful_memes", "incoming"]
    with pytest.raises(ValueError, match="unknown source 'memes'"):
        choose(["memes"], params, project)


def test_writing_the_sources_changes_only_that_key(project):
    params = project / "params.yaml"
    before = (project / "params.yaml").read_text()
    assert write_ingest_sources(params, ["hateful_memes", "synthetic"]) is True
    assert write_ingest_sources(params, ["hateful_memes", "synthetic"]) is False
    after = yaml.safe_load(params.read_text())
    original = yaml.safe_load(before)
    assert after["ingest"]["sources"] == ["hateful_memes", "synthetic"]
    original["ingest"]["sources"] = after["ingest"]["sources"]
    assert after == original
    # every other line is byte-identical: only the sources list grew
    assert len(params.read_text().splitlines()) == len(before.splitlines()) + 1


def _write_batch(folder, lines):
    (folder / "img").mkdir(parents=True)
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")


def test_incoming_batches_keep_ids_apart_and_report_bad_lines(tmp_path):
    from pipeline.sources import incoming

    line = json.dumps({"id": "7", "img": "img/7.png", "text": "hi", "label": "hateful"})
    _write_batch(tmp_path / "b2", [line, "{not json"])
    _write_batch(tmp_path / "b1", [line])
    _write_batch(tmp_path / ".landing", [line])  # still being copied in: not a batch yet
    records = list(incoming.read(tmp_path, "hateful_memes"))
    assert [r.source_id for r in records] == ["b1/7", "b2/7", "b2/train.jsonl:2"]
    assert records[-1].problem.startswith("malformed_json")
    assert {r.source for r in records} == {"incoming"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no <split>.jsonl"):
        list(incoming.read_batch(tmp_path / "empty", "hateful_memes"))
