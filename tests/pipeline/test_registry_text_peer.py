"""The text peer through the registry (real MLflow on a SQLite store): register records the peer's
scores as version tags and run metrics, and the gate, working from the registry alone, refuses a
challenger that does not beat them and promotes one that does."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline import registry
from pipeline.paths import Paths
from tests.pipeline.registry_fixtures import (
    install_candidate, model_dirs, project_params, write_test_split,
)

TASK = "hateful_memes"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return model_dirs(tmp_path_factory.mktemp("models"), TASK, {"good": 1, "weak": 2})


def test_gate_refuses_a_challenger_the_text_peer_beats_and_promotes_one_that_beats_it(
        tmp_path, models):
    paths = Paths(tmp_path)
    write_test_split(paths, TASK, oracle_dir=models["good"])  # "good" scores AUROC 1.0 on it
    params = project_params(tmp_path, TASK)
    name = registry.model_name(params)
    client = MlflowClient(tracking_uri=params.registry.tracking_uri,
                          registry_uri=params.registry.tracking_uri)

    # 1. no champion yet, every other criterion passes, but TF-IDF does better: keep
    install_candidate(paths, models["weak"], text_peer={"auroc": 0.99, "samples": 24})
    weak = registry.register(params, paths)["version"]
    decision = registry.promote(params, paths)
    assert not decision.promoted
    assert [r for r in decision.reasons if r.startswith("FAIL")] == [
        f"FAIL: auroc {decision.challenger_metrics['auroc']:.4f} does not beat the text peer's "
        "0.9900 by more than 0.0 (gain "
        f"{decision.challenger_metrics['auroc'] - 0.99:.4f})"]
    version = client.get_model_version(name, weak)
    assert version.tags["text_peer.test.auroc"] == "0.99"
    assert version.tags["gate.decision"] == "keep"
    assert "does not beat the text peer's 0.9900" in version.tags["gate.reasons"]
    # logged beside evaluate's eval_* metrics on the model's run
    run = client.get_run(version.run_id)
    assert run.data.metrics["text_peer_test_auroc"] == 0.99
    assert client.list_artifacts(version.run_id, "text_peer")[0].path == \
        "text_peer/metrics.json"

    # 2. a model that beats its run's peer is promoted
    install_candidate(paths, models["good"], text_peer={"auroc": 0.77, "samples": 24})
    good = registry.register(params, paths)["version"]
    decision = registry.promote(params, paths)
    assert decision.promoted and decision.challenger == good
    assert "PASS: auroc 1.0000 beats the text peer's 0.7700 by 0.2300 (must be > 0.0)" in \
        decision.reasons
