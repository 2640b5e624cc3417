"""Serving latency with the alias follower (make bench): the served pyfunc in-process, one-row
requests from client threads, side by side in one run:
- plain: following @champion, nothing moving;
- shadow: the same plus @challenger scored on every request off the request path;
- swapping: @champion flipped between two versions every SWAP_EVERY_S while the follower
  re-reads it every REFRESH_S, so downloads and loads run beside the requests.
Capture is on in all three (shadow scoring writes only to the capture log). Rounds alternate
the modes so a change in the machine's load hits all of them alike.

Sizes: MMGUARD_BENCH_SWAP_REQUESTS (per client per mode and round, default 60),
MMGUARD_BENCH_SWAP_CLIENTS (default 4), MMGUARD_BENCH_SWAP_ROUNDS (default 2).
"""
from __future__ import annotations

import os
import threading
import time

import mlflow
import numpy as np
import pytest

from pipeline import registry, serving, tracking
from pipeline.monitoring import capture
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.registry import history
from tests.bench.test_bench_inference import inputs
from tests.pipeline.registry_fixtures import install_candidate, model_dirs, project_params

TASK = "hateful_memes"
REQUESTS = int(os.environ.get("MMGUARD_BENCH_SWAP_REQUESTS", 60))
CLIENTS = int(os.environ.get("MMGUARD_BENCH_SWAP_CLIENTS", 4))
ROUNDS = int(os.environ.get("MMGUARD_BENCH_SWAP_ROUNDS", 2))
REFRESH_S = 0.5
SWAP_EVERY_S = 1.0


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-swap")
    paths = Paths(root)
    params = project_params(root, TASK)
    dirs = model_dirs(root, TASK, {"v1": 1, "v2": 2})
    for key in ("v1", "v2"):
        install_candidate(paths, dirs[key])
        registry.register(params, paths)  # @challenger ends on v2
    history.set_alias(params, root, "champion", "1", why="bench")
    return params, root


def load(params, **serving_params):
    follow = serving.follow_config(parse_params({"task": TASK, "serving": serving_params}))
    with tracking.using_uri(params.registry.tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{registry.model_name(params)}@champion",
                                         model_config={"follow": follow})
    assert model.unwrap_python_model().follower.first_pass.wait(120)
    return model


def measure(model, frame) -> tuple[list[float], set[str]]:
    """Per-request latencies (ms) of CLIENTS threads x REQUESTS one-row predicts; versions seen."""
    latencies: list[float] = []
    versions: set[str] = set()
    lock = threading.Lock()

    def client(offset: int) -> None:
        mine, seen = [], set()
        for i in range(REQUESTS):
            row = frame.iloc[[(offset * REQUESTS + i) % len(frame)]]
            start = time.perf_counter()
            answer = model.predict(row)
            mine.append((time.perf_counter() - start) * 1000)
            seen.update(answer["model_version"])
        with lock:
            latencies.extend(mine)
            versions.update(seen)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, versions


def flip_champion(params, root, stop: threading.Event, moves: list[int]) -> None:
    version = "1"
    while not stop.wait(SWAP_EVERY_S):
        version = "2" if version == "1" else "1"
        history.set_alias(params, root, "champion", version, why="bench: swap under load")
        moves[0] += 1


def test_serving_latency_plain_shadow_and_during_swaps(project, tmp_path, monkeypatch):
    params, root = project
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "log"))
    monkeypatch.setenv(capture.ENV_SWITCH, "1")
    monkeypatch.setattr(capture, "_LOG", None)
    plain = load(params, refresh_seconds=3600)
    shadowed = load(params, refresh_seconds=3600, shadow="challenger")
    swapping = load(params, refresh_seconds=REFRESH_S)
    frame = inputs(64, seed=3)
    for model in (plain, shadowed, swapping):
        model.predict(frame.iloc[:4])  # warm-up
    shadow = shadowed.unwrap_python_model().shadow
    shadow.drain(120)

    results = {"plain": [], "shadow": [], "swapping": []}
    seen, moves = set(), [0]
    swaps_before = swapping.unwrap_python_model().follower.swaps
    for _ in range(ROUNDS):
        results["plain"] += measure(plain, frame)[0]
        results["shadow"] += measure(shadowed, frame)[0]
        shadow.drain(300)  # its backlog must not slow the next mode down
        stop = threading.Event()
        flipper = threading.Thread(target=flip_champion, args=(params, root, stop, moves))
        flipper.start()
        try:
            latencies, versions = measure(swapping, frame)
        finally:
            stop.set()
            flipper.join()
        results["swapping"] += latencies
        seen |= versions
    swaps = swapping.unwrap_python_model().follower.swaps - swaps_before
    history.set_alias(params, root, "champion", "1", why="bench: back to v1")

    print(f"\nserved pyfunc in-process, tiny model, {CLIENTS} client threads x {REQUESTS} one-row "
          f"requests x {ROUNDS} rounds per mode, capture on:")
    base = np.percentile(results["plain"], [50, 95])
    for mode, latencies in results.items():
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"  {mode:9s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms   "
              f"ratio to plain: p50 {p50 / base[0]:.2f}x  p95 {p95 / base[1]:.2f}x")
    print(f"  shadow: {shadow.scored_rows} rows scored, {shadow.dropped_rows} dropped "
          f"(queue full), {shadow.skipped_rows} skipped")
    print(f"  swapping: @champion moved {moves[0]} times, {swaps} swaps done, versions answered "
          f"{sorted(seen)}")
    assert all(len(v) == CLIENTS * REQUESTS * ROUNDS for v in results.values())
    assert swaps >= 1 and seen == {"1", "2"}
