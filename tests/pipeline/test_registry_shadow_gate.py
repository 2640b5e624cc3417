"""`registry.gate.require_shadow_rows` through the registry (real MLflow on SQLite, a capture log
written by the real capture writer): a better challenger that has not yet scored enough served
requests in shadow is kept, and promoted once the log holds them."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import registry
from pipeline.monitoring import capture
from pipeline.params import MonitoringParams
from pipeline.paths import Paths
from tests.pipeline.registry_fixtures import (
    install_candidate, model_dirs, project_params, write_test_split,
)

TASK = "hateful_memes"


def plant_shadow_rows(folder, version: str, n: int) -> None:
    """n requests the served champion answered and shadow version `version` scored too."""
    p = np.linspace(0.1, 0.9, n)
    output = pd.DataFrame({"label": np.where(p > 0.5, "hateful", "not_hateful"),
                           "label_index": (p > 0.5).astype(int),
                           "prob_not_hateful": 1 - p, "prob_hateful": p})
    inputs = [f"image-{version}-{k}".encode() for k in range(n)]
    images = [Image.new("RGB", (40, 40), (20 * k % 255, 60, 90)) for k in range(n)]
    texts = [f"text {k}" for k in range(n)]
    writer = capture.CaptureLog(MonitoringParams(), str(folder))
    writer.record(inputs, images, texts, output, {"name": "m", "version": version},
                  capture.SHADOW, "req")
    writer.flush()


def test_a_challenger_needs_its_shadow_rows_before_it_replaces_the_champion(tmp_path,
                                                                            monkeypatch):
    log = tmp_path / "capture"
    monkeypatch.setenv(capture.ENV_URI, str(log))
    models = model_dirs(tmp_path / "models", TASK, {"good": 1, "weak": 2})
    paths = Paths(tmp_path / "project")
    write_test_split(paths, TASK, oracle_dir=models["good"])
    params = project_params(paths.root, TASK, require_shadow_rows=3)

    # no champion: nothing served traffic, so the criterion cannot be asked for yet
    install_candidate(paths, models["weak"])
    registry.register(params, paths)
    first = registry.promote(params, paths)
    assert first.promoted
    assert "PASS: no champion yet, so no served traffic to shadow" in first.reasons

    # a better challenger with no shadow rows (and rows of another version) is kept
    plant_shadow_rows(log, "99", 5)
    install_candidate(paths, models["good"], metrics={"auroc": 0.99, "samples": 24})
    better = registry.register(params, paths)["version"]
    kept = registry.gate(params, paths)
    assert not kept.promoted
    assert [r for r in kept.reasons if r.startswith("FAIL")] == [
        "FAIL: 0 shadow rows scored by this version in the traffic window (required: at least "
        "3)"]

    # once it has shadowed enough requests, the same challenger is promoted
    plant_shadow_rows(log, better, 3)
    promoted = registry.promote(params, paths)
    assert promoted.promoted and promoted.challenger == better
    assert ("PASS: 3 shadow rows scored by this version in the traffic window (required: at "
            "least 3)") in promoted.reasons
