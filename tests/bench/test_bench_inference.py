"""Inference benchmarks (make bench): batched vs per-sample pyfunc scoring, measured side by
side on the same inputs in one run, and single-request HTTP latency of the served champion.

Sizes come from the environment so a GPU machine can run a bigger case:
MMGUARD_BENCH_ROWS (default 256), MMGUARD_BENCH_BATCH (64), MMGUARD_BENCH_REQUESTS (50).
"""
from __future__ import annotations

import base64
import io
import os
import random
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from pipeline import registry, tracking
from pipeline.paths import Paths
from tests.pipeline.registry_fixtures import (
    MLFLOW_BIN, free_port, install_candidate, model_dirs, project_params,
    quiet_env, start_server, stop_server, write_test_split,
)

TASK = "hateful_memes"
ROWS = int(os.environ.get("MMGUARD_BENCH_ROWS", 256))
BATCH = int(os.environ.get("MMGUARD_BENCH_BATCH", 64))
REQUESTS = int(os.environ.get("MMGUARD_BENCH_REQUESTS", 50))
TARGET_RATIO = 10.0


def inputs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    images = []
    for _ in range(n):
        buffer = io.BytesIO()
        side = rng.randint(96, 224)
        pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(
            0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        images.append(base64.b64encode(buffer.getvalue()).decode())
    texts = [f"caption {i} " + " ".join(rng.choice(["calm", "odd", "hate", "fake", "meme"])
                                        for _ in range(rng.randint(3, 15))) for i in range(n)]
    return pd.DataFrame({"image": images, "text": texts})


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    paths = Paths(root)
    dirs = model_dirs(root, TASK, {"model": 1})
    write_test_split(paths, TASK, oracle_dir=dirs["model"])
    params = project_params(root, TASK)
    install_candidate(paths, dirs["model"])
    registry.register(params, paths)
    registry.promote(params, paths)
    return params, f"models:/{registry.model_name(params)}@champion", root


def test_batched_vs_per_sample_pyfunc_throughput(champion):
    params, uri, _ = champion
    with tracking.using_uri(params.registry.tracking_uri):
        model = mlflow.pyfunc.load_model(uri)
    frame = inputs(ROWS)
    model.predict(frame.iloc[:BATCH], params={"batch_size": BATCH})  # warm-up

    start = time.perf_counter()
    batched = model.predict(frame, params={"batch_size": BATCH})
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    single = [model.predict(frame.iloc[[i]]) for i in range(ROWS)]
    single_s = time.perf_counter() - start

    ratio = single_s / batched_s
    print(f"\npyfunc predict, {ROWS} rows, tiny model, device "
          f"{'cuda' if __import__('torch').cuda.is_available() else 'cpu'}:")
    print(f"  batched (batch {BATCH}) {ROWS / batched_s:9.1f} samples/s  ({batched_s:.2f} s)")
    print(f"  per-sample loop        {ROWS / single_s:9.1f} samples/s  ({single_s:.2f} s)")
    print(f"  ratio {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    # same answers either way: batching must not change predictions
    np.testing.assert_allclose(pd.concat(single)["prob_hateful"].to_numpy(),
                               batched["prob_hateful"].to_numpy(), atol=1e-4)
    assert ratio > 1.0


def test_http_single_prediction_latency(champion, tmp_path):
    params, uri, _ = champion
    port = free_port()
    command = [str(MLFLOW_BIN), "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    process = start_server(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log",
                           quiet_env(MLFLOW_TRACKING_URI=params.registry.tracking_uri))
    try:
        frame = inputs(REQUESTS + 5, seed=1)
        url = f"http://127.0.0.1:{port}/invocations"
        latencies = []
        with requests.Session() as session:
            for i, row in frame.iterrows():
                payload = {"dataframe_split": {"columns": ["image", "text"],
                                               "data": [[row["image"], row["text"]]]}}
                start = time.perf_counter()
                response = session.post(url, json=payload, timeout=60)
                elapsed = time.perf_counter() - start
                assert response.status_code == 200, response.text
                if i >= 5:  # the first requests warm the server up
                    latencies.append(elapsed * 1000)
    finally:
        stop_server(process)
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"\nHTTP /invocations, one row per request, {len(latencies)} requests on 127.0.0.1:"
          f"\n  p50 {p50:.1f} ms   p95 {p95:.1f} ms")
    assert p50 > 0 and p95 >= p50
