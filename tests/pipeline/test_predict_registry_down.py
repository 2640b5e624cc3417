"""`mmguard predict` with MLflow down: the capture writer's registry look-up of the model version
(made at exit for a short run) takes one short try, then the rows are written with the version
unresolved, instead of MLflow's minutes of retries."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
from mlflow.pyfunc import PythonModelContext

from pipeline import registry, tracking
from pipeline.monitoring import capture
from pipeline.paths import Paths
from tests.data import fixtures as fx
from tests.pipeline.registry_fixtures import (
    free_port, install_candidate, model_dirs, project_params, quiet_env, stop_server,
    tracking_server, write_test_split,
)

TASK = "hateful_memes"
MMGUARD = os.path.join(os.path.dirname(sys.executable), "mmguard")
# MLflow's HTTP settings as a caller may have set them: a look-up must put them back.
CALLERS_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "77",
                         "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"}


def served_context(tmp_path, run_id: str = "0123abcd") -> PythonModelContext:
    """What the pyfunc's context looks like: model_dir under a logged model holding MLmodel."""
    model = tmp_path / "logged-model"
    (model / "artifacts" / "model_dir").mkdir(parents=True)
    (model / "MLmodel").write_text(f"run_id: {run_id}\nmodel_id: m-1\n")
    return PythonModelContext({"model_dir": str(model / "artifacts" / "model_dir")}, {})


@pytest.mark.parametrize("server", ["closed port", "silent listener"])
def test_version_look_up_makes_one_short_try_then_gives_up(tmp_path, monkeypatch, caplog,
                                                          server):
    for key, value in CALLERS_HTTP_SETTINGS.items():
        monkeypatch.setenv(key, value)
    with socket.socket() as silent:
        if server == "closed port":
            port = free_port()  # nothing listens: refused at once
        else:  # accepts connections (the kernel's backlog) and never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
        started = time.monotonic()
        identity = capture._model_identity(served_context(tmp_path),
                                           f"http://127.0.0.1:{port}", timeout_s=1)
        elapsed = time.monotonic() - started
    # MLflow's defaults: 120 s a try and 7 retries with back-off, minutes in all
    assert elapsed < 15, elapsed
    assert identity == {"name": None, "version": None, "run_id": "0123abcd"}
    assert "could not be resolved" in caplog.text and "0123abcd" in caplog.text
    assert {key: os.environ.get(key) for key in CALLERS_HTTP_SETTINGS} == CALLERS_HTTP_SETTINGS


def write_rows(folder, count: int = 3):
    folder.mkdir(parents=True)
    lines = []
    for i in range(count):
        (folder / f"{i}.png").write_bytes(fx.png_bytes(i))
        lines.append(json.dumps({"id": f"r{i}", "image": f"{i}.png", "text": f"caption {i}"}))
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "rows.jsonl"


def predict(model: str, rows, out, log, workdir, params_file, root, timeout_s: float,
            **env_extra: str):
    """`mmguard predict` as a user runs it, capturing into `log`; (process, seconds taken)."""
    env = quiet_env(**{capture.ENV_SWITCH: "1", capture.ENV_URI: str(log)}, **env_extra)
    started = time.monotonic()
    done = subprocess.run([MMGUARD, "predict", "--model", model, "--input", str(rows),
                           "--output", str(out), "--params", str(params_file),
                           "--root", str(root)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    return done, time.monotonic() - started


def captured(log) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(part) for part in sorted(log.rglob("*.parquet"))])


@pytest.mark.slow  # a real `mlflow server`, a registration and two `mmguard predict` runs
def test_predict_with_mlflow_down_finishes_and_keeps_its_captured_rows(tmp_path):
    root, port = tmp_path / "project", free_port()
    uri = f"http://127.0.0.1:{port}"
    paths = Paths(root)
    dirs = model_dirs(root, TASK, {"good": 1})
    write_test_split(paths, TASK, oracle_dir=dirs["good"])
    params = project_params(root, TASK, tracking_uri=uri)
    # The first run names the store in the params file only: the writer must remember the store
    # it scored from after `tracking.store` has put the process-wide URIs back.
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    rows = write_rows(tmp_path / "input")
    name = registry.model_name(params)
    server = tracking_server(tmp_path, port)
    try:
        install_candidate(paths, dirs["good"])
        version = registry.register(params, paths)["version"]
        with tracking.store(params, root):
            local_model = mlflow.artifacts.download_artifacts(
                f"models:/{name}@challenger", dst_path=str(tmp_path / "local-model"))
        up, up_seconds = predict(f"models:/{name}@challenger", rows, tmp_path / "up.parquet",
                                 tmp_path / "log-up", tmp_path, params_file, root, 600)
    finally:
        stop_server(server)
    assert up.returncode == 0, up.stderr[-3000:]
    seen = captured(tmp_path / "log-up")
    assert len(seen) == 3 and set(seen["model_version"]) == {version}
    assert set(seen["model_name"]) == {name}

    # With the server in the environment too, as the stack's clients have it (`mmguard stack
    # env`), MLflow's retries held the exit for minutes; a run may take what the live one took.
    limit = max(60.0, up_seconds + 30)
    down, down_seconds = predict(local_model, rows, tmp_path / "down.parquet",
                                 tmp_path / "log-down", tmp_path, params_file, root, limit,
                                 MLFLOW_TRACKING_URI=uri)
    print(f"mmguard predict: {up_seconds:.1f} s with the server up, {down_seconds:.1f} s down")
    assert down.returncode == 0, down.stderr[-3000:]
    assert down_seconds < limit
    assert "could not be resolved" in down.stderr
    assert pd.read_parquet(tmp_path / "down.parquet")["error"].isna().all()
    kept = captured(tmp_path / "log-down")
    assert len(kept) == 3 and kept["model_version"].isna().all()
    assert set(kept["model_run_id"]) == set(seen["model_run_id"])  # still names the model
