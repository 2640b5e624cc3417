"""Serving follows @champion without a restart (pipeline/hot_swap.py) and shadow-scores with
@challenger (pipeline/monitoring/shadow.py), against real registries of tiny models.

Fast tier: the pyfunc in-process, its follower driven by hand (`follower.refresh()`). Slow tier:
`mlflow models serve` on 127.0.0.1 under 16 client threads while @champion is promoted, rolled
back and moved to a version whose weights are gone."""
from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow import MlflowClient

from pipeline import registry, serving, tracking
from pipeline.monitoring import capture
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.registry import history
from tests.data import fixtures as fx
from tests.pipeline.registry_fixtures import (
    MLFLOW_BIN, free_port, install_candidate, model_dirs, quiet_env, start_server, stop_server,
    write_test_split,
)
from tests.stores import sqlite_store

TASK = "hateful_memes"
PROBS = ["prob_not_hateful", "prob_hateful"]


def swap_params(root: Path, **serving_params):
    return parse_params({
        "task": TASK, "serving": serving_params,
        "registry": {"tracking_uri": sqlite_store(root / "mlflow.db"),
                     "gate": {"min_auroc": 0.0, "min_top1": 0.0, "min_top2": 0.0}}})


def break_weights(params, version: str) -> None:
    """Delete the version's model folder from the local artifact store: its record stays in the
    registry, its weights are gone (a cleaned-up bucket, a half-copied store)."""
    uri = params.registry.tracking_uri
    location = Path(urlparse(MlflowClient(uri, uri).get_model_version_download_uri(
        registry.model_name(params), version)).path)
    mlmodel = yaml.safe_load((location / "MLmodel").read_text())
    shutil.rmtree(location / mlmodel["flavors"]["python_function"]["artifacts"]["model_dir"]
                  ["path"])


def frame_of(n: int, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"image": [base64.b64encode(fx.png_bytes(seed + i)).decode()
                                   for i in range(n)],
                         "text": [f"caption {seed + i}" for i in range(n)]})


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """A registry with versions 1, 2 (tiny models of other seeds) and 3 (weights deleted);
    @challenger is 3 after registering."""
    root = tmp_path_factory.mktemp("hot-swap")
    paths = Paths(root)
    params = swap_params(root, refresh_seconds=3600)  # the tests drive the follower by hand
    dirs = model_dirs(root, TASK, {"v1": 1, "v2": 2, "v3": 3})
    for key in ("v1", "v2", "v3"):
        install_candidate(paths, dirs[key])
        registry.register(params, paths)
    break_weights(params, "3")
    return params, paths


def load(params, uri: str, **overrides):
    with tracking.using_uri(params.registry.tracking_uri):
        return mlflow.pyfunc.load_model(uri, model_config=overrides or None)


def pinned_answer(params, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    model = load(params, f"models:/{registry.model_name(params)}/{version}", **serving.PINNED)
    return model.predict(frame)


def test_a_promoted_version_is_swapped_in_and_a_broken_one_is_not(versions, caplog):
    params, paths = versions
    name = registry.model_name(params)
    history.set_alias(params, paths.root, "champion", "1", why="test: start at v1")
    model = load(params, f"models:/{name}@champion")
    served = model.unwrap_python_model()
    assert served.follower.first_pass.wait(60)
    frame = frame_of(4)
    before = model.predict(frame)
    assert set(before["model_version"]) == {"1"}

    in_flight = served.served.current  # what a request that started now holds
    history.set_alias(params, paths.root, "champion", "2", why="test: move to v2")
    served.follower.refresh()
    after = model.predict(frame)
    assert set(after["model_version"]) == {"2"}
    pd.testing.assert_frame_equal(after, pinned_answer(params, "2", frame), check_exact=True)
    assert in_flight.version == "1" and served.served.current is not in_flight
    assert list(after.columns) == ["label", "label_index", *PROBS, "model_version", "decision"]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.hot_swap"):
        history.set_alias(params, paths.root, "champion", "3", why="test: weights deleted")
        served.follower.refresh()
    still = model.predict(frame)
    assert set(still["model_version"]) == {"2"}  # the old model keeps answering
    pd.testing.assert_frame_equal(still, after, check_exact=True)
    [failure] = [r for r in caplog.records if "could not load" in r.getMessage()]
    message = failure.getMessage()
    assert f"{name} version 3" in message and "version 2 keeps serving" in message
    assert "Error" in message or "Exception" in message  # the reason, by its exception type
    assert failure.levelno == logging.ERROR


def test_a_version_uri_follows_champion_unless_pinned(versions):
    params, paths = versions
    name = registry.model_name(params)
    history.set_alias(params, paths.root, "champion", "2", why="test: champion v2")
    following = load(params, f"models:/{name}/1")
    following.unwrap_python_model().follower.first_pass.wait(60)
    assert set(following.predict(frame_of(2))["model_version"]) == {"2"}
    pinned = load(params, f"models:/{name}/1", **serving.PINNED)
    assert pinned.unwrap_python_model().follower is None
    assert set(pinned.predict(frame_of(2))["model_version"]) == {"1"}


@pytest.fixture
def capture_log(tmp_path, monkeypatch):
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "log"))
    monkeypatch.setenv(capture.ENV_SWITCH, "1")
    monkeypatch.setattr(capture, "_LOG", None)
    return tmp_path / "log"


def test_shadow_scoring_never_changes_the_answer_and_logs_both(versions, capture_log):
    params, paths = versions
    name = registry.model_name(params)
    history.set_alias(params, paths.root, "champion", "1", why="test: champion v1")
    history.set_alias(params, paths.root, "challenger", "2", why="test: challenger v2")
    shadowed = load(params, f"models:/{name}@champion", follow=serving.follow_config(
        parse_params({"task": TASK, "serving": {"shadow": "challenger"}})))
    plain = load(params, f"models:/{name}@champion", **serving.PINNED)
    scorer = shadowed.unwrap_python_model().shadow
    assert shadowed.unwrap_python_model().follower.first_pass.wait(60)
    frames = [frame_of(3, seed=0), frame_of(5, seed=10)]

    answers = [shadowed.predict(frame) for frame in frames]
    assert scorer.drain(60)
    with capture.paused():  # the comparison's own scoring is not traffic
        for frame, answer in zip(frames, answers):
            pd.testing.assert_frame_equal(answer, plain.predict(frame), check_exact=True)
        challenger = pd.concat([pinned_answer(params, "2", f) for f in frames],
                               ignore_index=True)
    assert scorer.scored_rows == 8 and scorer.dropped_rows == scorer.skipped_rows == 0

    capture.flush()
    log = pd.concat([pd.read_parquet(p) for p in capture_log.rglob("part-*.parquet")])
    served, shadow = log[log["role"] == "served"], log[log["role"] == "shadow"]
    assert len(served) == len(shadow) == 8
    assert set(served["model_version"]) == {"1"} and set(shadow["model_version"]) == {"2"}
    assert set(served["score_id"]) == set(shadow["score_id"])
    pairs = served.merge(shadow, on="score_id", suffixes=("", "_shadow"))
    by_row = {sid: k for k, sid in enumerate(served["score_id"])}
    for row in pairs.itertuples():
        expected = challenger.iloc[by_row[row.score_id]]
        assert json.loads(row.probabilities_shadow)["hateful"] == pytest.approx(
            expected["prob_hateful"], abs=1e-9)
        assert row.text == row.text_shadow and row.image_sha256 == row.image_sha256_shadow
    # traffic readers (drift --since) see the served rows only
    cutoff = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    assert len(capture.read_log(str(capture_log), cutoff.to_pydatetime())) == 8


def test_a_full_shadow_queue_drops_and_counts_without_blocking(versions, capture_log):
    params, paths = versions
    name = registry.model_name(params)
    history.set_alias(params, paths.root, "champion", "1", why="test: champion v1")
    history.set_alias(params, paths.root, "challenger", "2", why="test: challenger v2")
    config = serving.follow_config(parse_params(
        {"task": TASK, "serving": {"shadow": "challenger", "shadow_max_pending": 1}}))
    model = load(params, f"models:/{name}@champion", follow=config)
    served = model.unwrap_python_model()
    assert served.follower.first_pass.wait(60)
    frame = frame_of(8)
    images = [serving.decode_image(v, served.limits) for v in frame["image"]]
    started = time.monotonic()
    accepted = [served.shadow.submit(frame, images, list(frame["text"]), f"r{i}", "1", 8)
                for i in range(50)]
    submitting = time.monotonic() - started
    assert served.shadow.drain(120)
    # one request waits, one is being scored: the rest of a burst is dropped, not waited for
    assert submitting < 1.0 and accepted.count(False) >= 25
    shadow = served.shadow
    assert shadow.dropped_rows == 8 * accepted.count(False)
    assert shadow.scored_rows == 8 * accepted.count(True) and shadow.skipped_rows == 0


# ---------------------------------------------------------------- a real server under load

CLIENTS = 16
MAX_REQUESTS = 120  # per client: the run ends long before, this only bounds it
PACE_S = 0.2
AFTER_SWAP = 48  # responses to collect after each swap before the next move


class Traffic:
    """16 client threads posting one-row requests until told to stop; every response kept."""

    def __init__(self, url: str):
        self.url = url
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        payload_rows = [[base64.b64encode(fx.png_bytes(i)).decode(), f"caption {i}"]
                        for i in range(CLIENTS)]
        self.threads = [threading.Thread(target=self._client, args=(row,), daemon=True)
                        for row in payload_rows]

    def _client(self, row) -> None:
        payload = {"dataframe_split": {"columns": ["image", "text"], "data": [row]}}
        with requests.Session() as session:
            for _ in range(MAX_REQUESTS):
                if self.stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    response = session.post(self.url, json=payload, timeout=120)
                    status, body = response.status_code, response.text
                except requests.RequestException as exc:
                    status, body = None, repr(exc)
                version = None
                if status == 200:
                    version = json.loads(body)["predictions"][0].get("model_version")
                with self.lock:
                    self.results.append({"sent": sent, "received": time.monotonic(),
                                         "status": status, "version": version, "body": body})
                time.sleep(PACE_S)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.results)

    def wait_for(self, condition, timeout_s: float, what: str) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.snapshot()
            if condition(seen):
                return seen
            if not any(t.is_alive() for t in self.threads):
                break
            time.sleep(0.05)
        raise AssertionError(f"{what} within {timeout_s:.0f} s: {len(self.snapshot())} "
                             "responses so far")

    def first_from(self, version: str, moved_at: float, timeout_s: float = 180) -> float:
        """When the first response from `version` to a request sent after the move arrived."""
        def found(seen):
            return any(r["version"] == version and r["sent"] > moved_at for r in seen)
        seen = self.wait_for(found, timeout_s, f"no response from version {version}")
        return min(r["received"] for r in seen if r["version"] == version
                   and r["sent"] > moved_at)

    def settle(self, since: float) -> None:
        self.wait_for(lambda seen: sum(r["sent"] > since for r in seen) >= AFTER_SWAP, 180,
                      f"fewer than {AFTER_SWAP} responses")


@pytest.mark.slow
def test_the_served_model_follows_champion_under_load(tmp_path):
    root = tmp_path / "project"
    paths = Paths(root)
    params = swap_params(root, refresh_seconds=1)
    name = registry.model_name(params)
    dirs = model_dirs(root, TASK, {"v1": 1, "v2": 2, "v3": 3})
    write_test_split(paths, TASK, oracle_dir=dirs["v2"])  # v2 is perfect, v1 near chance
    install_candidate(paths, dirs["v1"])
    registry.register(params, paths)
    assert registry.promote(params, paths).promoted  # v1, the first champion
    install_candidate(paths, dirs["v2"])
    registry.register(params, paths)
    decision = registry.gate(params, paths)  # decided now, applied under load
    assert decision.promoted and decision.challenger == "2"
    install_candidate(paths, dirs["v3"])
    registry.register(params, paths)
    break_weights(params, "3")

    port = free_port()
    log_path = tmp_path / "serve.log"
    command = [str(MLFLOW_BIN), "models", "serve", "-m", f"models:/{name}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    server = start_server(command, f"http://127.0.0.1:{port}/ping", log_path,
                          quiet_env(MLFLOW_TRACKING_URI=params.registry.tracking_uri))
    traffic = Traffic(f"http://127.0.0.1:{port}/invocations")
    try:
        for thread in traffic.threads:
            thread.start()
        traffic.settle(0.0)
        promoted_at = time.monotonic()
        registry.apply_decision(params, paths, decision)  # @champion: 1 -> 2
        swapped_in = traffic.first_from("2", promoted_at)
        traffic.settle(swapped_in)
        rolled_back_at = time.monotonic()
        registry.rollback(params, paths, why="test: back to v1")  # @champion: 2 -> 1
        swapped_back = traffic.first_from("1", rolled_back_at)
        traffic.settle(swapped_back)
        broken_at = time.monotonic()
        history.set_alias(params, root, "champion", "3", why="test: weights deleted")
        traffic.wait_for(lambda _: "version 3" in log_path.read_text(errors="replace"), 120,
                         "no log line about version 3")
        traffic.settle(time.monotonic())
    finally:
        traffic.stop.set()
        for thread in traffic.threads:
            thread.join(timeout=180)
        stop_server(server)

    results = traffic.snapshot()
    failed = [r for r in results if r["status"] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:3]}"
    assert all(r["version"] in ("1", "2") for r in results)  # every response names a version
    assert all(r["version"] == "1" for r in results if r["received"] < promoted_at)

    # Once a response from the new version has arrived, the swap is done: every request sent
    # afterwards (until the next move) is answered by it.
    def after(start, end):
        return [r for r in results if start < r["sent"] and r["received"] < end]
    assert {r["version"] for r in after(swapped_in, rolled_back_at)} == {"2"}
    assert {r["version"] for r in after(swapped_back, broken_at)} == {"1"}
    assert {r["version"] for r in results if r["sent"] > broken_at} == {"1"}
    # requests were in flight while each swap happened, and all of them were answered
    for moved, swapped in ((promoted_at, swapped_in), (rolled_back_at, swapped_back)):
        assert any(moved < r["sent"] < swapped for r in results)
        assert swapped - moved < 60  # refresh 1 s + download + load, on a busy machine
    served_log = log_path.read_text(errors="replace")
    assert "could not load" in served_log and "version 1 keeps serving" in served_log
    events = [(e["to"], e["action"]) for e in history.read(params, root, "champion")]
    assert events == [("1", "promote"), ("2", "promote"), ("1", "rollback"), ("3", "manual")]
    print(f"\n{len(results)} requests, none failed; swap after promote "
          f"{swapped_in - promoted_at:.1f} s, after rollback {swapped_back - rolled_back_at:.1f} s")
