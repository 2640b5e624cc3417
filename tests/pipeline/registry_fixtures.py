"""Helpers for the registry, serving and benchmark tests: a tiny project whose test labels a
chosen model predicts perfectly, and real server subprocesses on free 127.0.0.1 ports."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import webdataset as wds
from PIL import Image

from pipeline import text_peer as text_peer_files
from pipeline.model import build_model, save_model
from pipeline.params import Params, parse_params
from pipeline.paths import Paths
from pipeline.taxonomy import class_names
from tests.model.shard_writer import sample
from tests.stores import sqlite_store

MLFLOW_BIN = Path(sys.executable).with_name("mlflow")


def project_params(root: Path, task: str = "hateful_memes", tracking_uri: str | None = None,
                   **gate) -> Params:
    return parse_params({
        "task": task,
        "registry": {"tracking_uri": tracking_uri or sqlite_store(root / "mlflow.db"),
                     "gate": {"min_auroc": 0.0, "min_top1": 0.0, "min_top2": 0.0, **gate}}})


def model_dirs(root: Path, task: str, seeds: dict[str, int]) -> dict[str, Path]:
    """Random-init tiny models, one per name; different seeds score differently."""
    dirs = {}
    for name, seed in seeds.items():
        params = parse_params({"task": task, "train": {"seed": seed}})
        dirs[name] = save_model(build_model(params), root / "models" / name)
    return dirs


def write_test_split(paths: Paths, task: str, oracle_dir: Path, n: int = 24,
                     seed: int = 0) -> None:
    """Test shards whose labels are what `oracle_dir`'s model predicts (binary: above its median
    score), so that model scores perfectly and any other model near chance."""
    from pipeline.model import load_model

    rng = random.Random(seed)
    names = class_names(task)
    samples = [sample(task, "test", i, rng.randrange(len(names)), rng) for i in range(n)]
    images = [Image.open(io.BytesIO(s["jpg"])).convert("RGB") for s in samples]
    texts = [s["txt"].decode() for s in samples]
    probs = load_model(oracle_dir).predict_proba(images, texts)
    if len(names) == 2:
        labels = (probs[:, 1] > np.median(probs[:, 1])).astype(int)
    else:
        labels = probs.argmax(axis=1)
    folder = paths.shards / "test"
    folder.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(folder / "shard-000000.tar")) as sink:
        for item, label in zip(samples, labels):
            meta = json.loads(item["json"]) | {"label": int(label), "label_name": names[label]}
            sink.write(item | {"cls": str(int(label)).encode(), "json": json.dumps(meta).encode()})
    paths.shard_sizes.write_text(json.dumps({
        "task": task, "class_names": list(names),
        "splits": {"test": {"samples": n, "shards": ["test/shard-000000.tar"]}}}))


# A text peer every model beats: tests about the gate's other criteria stay about those.
BEATEN_PEER = {"auroc": 0.0, "top1": 0.0, "top2": 0.0}


# An operating point that flags nothing (no tiny model's probability reaches 1.0): the served
# `decision` column exists and holds its FPR target, so the gate's operating criteria pass and
# tests about the other criteria stay about those (tests/unit/test_gate_bootstrap.py covers it).
FLAGS_NOTHING = {"primary_fpr": 0.05, "points": [{"fpr_target": 0.05, "threshold": 1.0}]}


def install_candidate(paths: Paths, model_dir: Path, checks_passed: bool = True,
                      metrics: dict | None = None,
                      text_peer: dict | None = BEATEN_PEER,
                      operating: dict | None = FLAGS_NOTHING,
                      temperature: float = 1.0) -> None:
    """Put a model where `register` looks, with the checks report, metrics, operating points
    and temperature (evaluate's metrics.json; operating None: none recorded) and text peer test
    scores (artifacts/text_peer/metrics.json; None: the text_peer stage did not run) it
    records."""
    if paths.model_dir.exists():
        shutil.rmtree(paths.model_dir)
    shutil.copytree(model_dir, paths.model_dir)
    paths.checks_dir.mkdir(parents=True, exist_ok=True)
    failed = [] if checks_passed else ["auroc_above_chance"]
    (paths.checks_dir / "report.json").write_text(json.dumps(
        {"passed": checks_passed, "failed_errors": failed, "checks": []}))
    paths.evaluate_dir.mkdir(parents=True, exist_ok=True)
    evaluation = {"test": metrics or {"auroc": 0.5, "samples": 24},
                  "calibration": {"temperature": temperature}}
    if operating is not None:
        evaluation["operating_points"] = operating
    (paths.evaluate_dir / "metrics.json").write_text(json.dumps(evaluation))
    peer_file = text_peer_files.metrics_path(paths)
    peer_file.unlink(missing_ok=True)
    if text_peer is not None:
        peer_file.parent.mkdir(parents=True, exist_ok=True)
        peer_file.write_text(json.dumps({"c": 1.0, "fallback": None, "test": text_peer}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ) | {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def start_server(command: list[str], ready_url: str, log_path: Path, env: dict[str, str],
                 timeout_s: float = 300) -> subprocess.Popen:
    """Start a server subprocess and wait until `ready_url` answers 200; fail with its log."""
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(ready_url, timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(1)
    stop_server(process)
    raise RuntimeError(f"server not ready after {timeout_s}s:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and the workers it spawned (its own process group, nothing else)."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


def tracking_server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts."""
    command = [str(MLFLOW_BIN), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "server-artifacts"), "--workers", "1"]
    return start_server(command, f"http://127.0.0.1:{port}/health", root / "server.log",
                        quiet_env())


def named_params(root: Path, model: str, tracking_uri: str | None = None) -> Params:
    """Params whose registered model is `model`: tests sharing one store stay apart."""
    return parse_params({"registry": {
        "tracking_uri": tracking_uri or sqlite_store(root / "mlflow.db"), "model_name": model}})


def bare_versions(client, name: str, count: int) -> list[str]:
    """Registered versions with no model behind them: enough for alias moves, which never load
    the model (the gate that would is given its decision directly)."""
    client.create_registered_model(name)
    # a remote-looking source: a tracking server refuses local paths outside a run
    return [str(client.create_model_version(name, f"s3://bare-versions/{name}/{i}").version)
            for i in range(count)]
