"""The served model applies its own temperature and flags at its own threshold (both from
evaluate's metrics.json, carried by register), also after a swap to another version: real
MLflow registry on SQLite, tiny models."""
from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from pipeline import calibration, hot_swap, registry, serving, tracking
from pipeline.model import load_model
from pipeline.operating_points import Served
from pipeline.paths import Paths
from tests.data import fixtures as fx
from tests.pipeline.registry_fixtures import install_candidate, model_dirs, project_params

TASK = "hateful_memes"


def test_served_answers_are_temperature_scaled_and_flagged_at_each_versions_threshold(tmp_path):
    paths = Paths(tmp_path)
    params = project_params(tmp_path, TASK)
    dirs = model_dirs(tmp_path, TASK, {"a": 1, "b": 2})
    frame = pd.DataFrame({"image": [base64.b64encode(fx.png_bytes(i)).decode()
                                    for i in range(12)],
                          "text": [f"caption number {i}" for i in range(12)]})
    images = [Image.open(io.BytesIO(base64.b64decode(v))).convert("RGB") for v in frame["image"]]
    texts = list(frame["text"])

    versions = {}
    for key, temperature in (("a", 3.0), ("b", 0.5)):
        raw = load_model(dirs[key]).predict_proba(images, texts)
        # a threshold inside this model's scaled scores: some rows flagged, some not
        threshold = float(np.median(calibration.scale(raw, temperature)[:, 1]))
        install_candidate(paths, dirs[key], temperature=temperature, operating={
            "primary_fpr": 0.05, "points": [{"fpr_target": 0.05, "threshold": threshold}]})
        versions[key] = (registry.register(params, paths)["version"], raw, temperature,
                         threshold)

    name = registry.model_name(params)
    for key, (version, raw, temperature, threshold) in versions.items():
        expected = calibration.scale(raw, temperature)
        with tracking.store(params):
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}",
                                             model_config=serving.PINNED)
            output = model.predict(frame)
        np.testing.assert_allclose(output[["prob_not_hateful", "prob_hateful"]], expected,
                                   atol=1e-6)
        flags = (expected[:, 1] >= threshold).astype(int)
        assert 0 < flags.sum() < len(flags)
        assert output["decision"].tolist() == flags.tolist()

    # a version swapped in by the follower brings its own operating point, from its tags
    uri = params.registry.tracking_uri
    version, raw, temperature, threshold = versions["b"]
    swapped = hot_swap.load_version(uri, name, version, "cpu", ("not_hateful", "hateful"))
    assert swapped.operating == Served(temperature, threshold, 0.05)
    answer = serving.score(swapped, images, texts, batch_size=8)
    expected = calibration.scale(raw, temperature)
    np.testing.assert_allclose(answer["prob_hateful"], expected[:, 1], atol=1e-6)
    assert answer["decision"].tolist() == (expected[:, 1] >= threshold).astype(int).tolist()


def test_a_binary_model_without_an_operating_point_answers_without_decision():
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    bare = serving.output_frame(probs, ("not_hateful", "hateful"), "1")
    assert "decision" not in bare.columns
    flagged = serving.output_frame(probs, ("not_hateful", "hateful"), "1", Served(1.0, 0.5, 0.05))
    assert flagged["decision"].tolist() == [1, 0]
    seven = serving.output_frame(np.eye(7)[:2] * 0.9 + 0.1 / 7, tuple("abcdefg"), "1",
                                 Served(2.0, None, None))
    assert "decision" not in seven.columns and seven["label"].tolist() == ["a", "b"]
