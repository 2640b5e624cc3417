"""Serving: the registered champion answers real HTTP requests from `mlflow models serve`, and
`mmguard predict` scores a file, reporting bad rows instead of crashing."""
from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from pipeline import registry, tracking
from pipeline.cli import app
from pipeline.paths import Paths
from pipeline.serving import BadInput, decode_image
from tests.pipeline.registry_fixtures import (
    MLFLOW_BIN, free_port, install_candidate, model_dirs, project_params,
    quiet_env, start_server, stop_server, write_test_split,
)

TASK = "hateful_memes"
PROBS = ["prob_not_hateful", "prob_hateful"]


def png_bytes(colour=(200, 40, 40), side=48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A project whose registry holds one version, promoted to @champion."""
    root = tmp_path_factory.mktemp("serving")
    paths = Paths(root)
    dirs = model_dirs(root, TASK, {"good": 1})
    write_test_split(paths, TASK, oracle_dir=dirs["good"])
    params = project_params(root, TASK)
    install_candidate(paths, dirs["good"])
    registry.register(params, paths)
    assert registry.promote(params, paths).promoted
    return params, paths


@pytest.fixture(scope="module")
def served(champion, tmp_path_factory):
    params, paths = champion
    port = free_port()
    uri = f"models:/{registry.model_name(params)}@champion"
    command = [str(MLFLOW_BIN), "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = quiet_env(MLFLOW_TRACKING_URI=params.registry.tracking_uri)
    process = start_server(command, f"http://127.0.0.1:{port}/ping",
                           tmp_path_factory.mktemp("logs") / "serve.log", env)
    yield f"http://127.0.0.1:{port}"
    stop_server(process)


def test_decode_image_accepts_base64_and_paths_and_rejects_garbage(tmp_path):
    data = png_bytes()
    assert decode_image(base64.b64encode(data).decode()).size == (48, 48)
    (tmp_path / "a.png").write_bytes(data)
    assert decode_image(str(tmp_path / "a.png")).mode == "RGB"
    with pytest.raises(BadInput, match="neither an existing file nor base64"):
        decode_image("not base64 !!")
    with pytest.raises(BadInput, match="cannot be decoded"):
        decode_image(base64.b64encode(data[:30]).decode())  # truncated PNG
    with pytest.raises(BadInput, match="must be a base64 string or a path"):
        decode_image(None)


@pytest.mark.slow
def test_served_champion_answers_invocations(served, champion):
    params, _ = champion
    images = [base64.b64encode(png_bytes(c)).decode() for c in ((200, 40, 40), (10, 90, 250))]
    payload = {"dataframe_split": {"columns": ["image", "text"],
                                   "data": [[images[0], "a harmless caption"],
                                            [images[1], "another caption entirely"]]}}
    response = requests.post(f"{served}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    predictions = pd.DataFrame(response.json()["predictions"])
    assert list(predictions.columns) == ["label", "label_index", *PROBS]
    assert set(predictions["label"]) <= {"not_hateful", "hateful"}
    np.testing.assert_allclose(predictions[PROBS].sum(axis=1), 1.0, atol=1e-5)

    # the HTTP answer is the registered model's answer
    with tracking.store(params):
        local = mlflow.pyfunc.load_model(f"models:/{registry.model_name(params)}@champion")
    expected = local.predict(pd.DataFrame(payload["dataframe_split"]["data"],
                                          columns=["image", "text"]))
    np.testing.assert_allclose(predictions[PROBS].to_numpy(), expected[PROBS].to_numpy(),
                               atol=1e-5)


@pytest.mark.slow
def test_served_model_rejects_a_bad_image_with_a_clear_400(served):
    payload = {"dataframe_split": {"columns": ["image", "text"], "data": [["@@@", "text"]]}}
    response = requests.post(f"{served}/invocations", json=payload, timeout=60)
    assert response.status_code == 400
    assert "row 0" in response.text and "base64" in response.text


def test_predict_cli_scores_good_rows_and_reports_bad_ones(champion, tmp_path):
    params, paths = champion
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(png_bytes())
    (tmp_path / "img" / "blue.png").write_bytes(png_bytes((0, 0, 255)))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    lines = [json.dumps({"id": "a", "image": "img/red.png", "text": "first"}),
             json.dumps({"id": "b", "image": "img/missing.png", "text": "no such file"}),
             '{"id": "c", "image": "img/red.png", "text": ',  # malformed JSON
             json.dumps({"id": "d", "image": "img/broken.png", "text": "corrupt image"}),
             json.dumps({"id": "e", "image": "img/blue.png"}),  # no text
             json.dumps({"id": "f", "img": None, "text": "no image"}),
             json.dumps({"id": "g", "image": "img/blue.png", "text": "last"})]
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join(lines) + "\n")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    output = tmp_path / "out" / "predictions.parquet"

    result = CliRunner().invoke(app, [
        "predict", "--model", f"models:/{registry.model_name(params)}@champion",
        "--input", str(source), "--output", str(output), "--batch-size", "4",
        "--params", str(params_file), "--root", str(paths.root)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["rows"] == 7 and summary["scored"] == 2 and summary["bad"] == 5

    frame = pd.read_parquet(output).set_index("id", drop=False)
    assert len(frame) == 7  # every input row comes out once
    assert frame.loc["a", "error"] is None and frame.loc["g", "error"] is None
    assert frame.loc[["a", "g"], PROBS].notna().all().all()
    assert frame.loc["a", "label"] in ("not_hateful", "hateful")
    errors = frame["error"].fillna("")
    assert "cannot be decoded" in errors["d"] and "missing_text" in errors["e"]
    assert "missing_image" in errors["f"]
    assert errors["b"] != "" and frame.loc[["b", "d", "e", "f"], PROBS].isna().all().all()
    assert frame["error"].str.startswith("malformed_line 3").sum() == 1


def test_predict_cli_refuses_unknown_formats(champion, tmp_path):
    params, paths = champion
    (tmp_path / "rows.csv").write_text("image,text\n")
    result = CliRunner().invoke(app, ["predict", "--model", "models:/x@champion", "--input",
                                      str(tmp_path / "rows.csv"), "--output",
                                      str(tmp_path / "out.parquet")])
    assert result.exit_code == 2
