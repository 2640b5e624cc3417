"""The drift stage judges with the registered @champion (real MLflow on SQLite): the version the
alias names, loaded pinned, so no thread follows the alias while the stage runs."""
from __future__ import annotations

import threading

import torch

from pipeline import registry
from pipeline.model import load_model
from pipeline.monitoring.embeddings import load_monitored_model
from pipeline.paths import Paths
from tests.pipeline.registry_fixtures import (
    install_candidate, model_dirs, project_params, write_test_split,
)

TASK = "hateful_memes"


def test_drift_loads_the_champion_version_pinned(tmp_path):
    models = model_dirs(tmp_path / "models", TASK, {"champ": 1, "other": 2})
    paths = Paths(tmp_path / "project")
    write_test_split(paths, TASK, oracle_dir=models["champ"])
    params = project_params(paths.root, TASK)
    install_candidate(paths, models["champ"])
    version = registry.register(params, paths)["version"]
    assert registry.promote(params, paths).promoted
    # the workspace's model is another one: drift must not judge with it
    install_candidate(paths, models["other"])

    monitored = load_monitored_model(params, paths)

    assert monitored.source == f"models:/{registry.model_name(params)}@champion " \
                               f"(version {version})"
    expected = load_model(models["champ"]).state_dict()
    loaded = monitored.model.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert "mmguard-follow" not in {t.name for t in threading.enumerate()}
