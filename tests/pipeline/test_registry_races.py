"""Registry races against real MLflow stores: two promotions at once, a promotion during a
rollback, and two registrations of one model at once, in threads and in real processes.

Alias moves never load a model, so most of these use bare versions and hand-written gate
decisions (what `mmguard gate --out` writes); the read→write window inside the operations is
widened with a sleep so that a missing lock shows up every time, not by luck. The unlocked runs
below prove these tests catch the lost update the lock prevents.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time

import pytest
from mlflow import MlflowClient

from pipeline import registry
from pipeline.paths import Paths
from pipeline.registry import operations
from tests.pipeline.registry_fixtures import (
    bare_versions, free_port, install_candidate, model_dirs, named_params,
    quiet_env, stop_server, tracking_server,
)

WINDOW_S = 1.0  # far longer than the scheduling jitter of a loaded machine


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("races")


def client_of(params):
    uri = params.registry.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(client, name):
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def decision(client, name, challenger, seen):
    """A promote decision for `challenger`, recorded on it as `mmguard gate` records one (a
    decision is applied only while it is the version's latest gate run)."""
    made = registry.GateDecision("promote", name, challenger, seen, ["PASS: test decision"],
                                 **operations._gate_run())
    operations._record_decision(client, made)
    return made


@pytest.fixture
def wide_window(monkeypatch):
    """Sleep after every alias read inside the operations, so concurrent ones overlap."""
    read = operations.alias_number

    def slow_read(*args):
        value = read(*args)
        time.sleep(WINDOW_S)
        return value

    monkeypatch.setattr(operations, "alias_number", slow_read)


def run_together(*calls):
    """Start the calls at the same instant in threads; each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def worker(i, call):
        barrier.wait()
        try:
            outcomes[i] = call()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def two_promotions(params, root, name):
    """Champion v1; gate decisions for v2 and v3 both scored against v1, applied at once."""
    client = client_of(params)
    v1, v2, v3 = bare_versions(client, name, 3)
    registry.apply_decision(params, Paths(root), decision(client, name, v1, None))
    outcomes = run_together(
        lambda: registry.apply_decision(params, Paths(root), decision(client, name, v2, v1)),
        lambda: registry.apply_decision(params, Paths(root), decision(client, name, v3, v1)))
    return client, (v1, v2, v3), outcomes


def one_wins(outcomes) -> bool:
    """Serialised: one promotion applied, the other refused by compare-and-set."""
    won = [o for o in outcomes if isinstance(o, dict) and o["moved"]]
    refused = [o for o in outcomes if isinstance(o, registry.RegistryError)
               and str(o).startswith("refused: @champion of")]
    return len(won) == 1 and len(refused) == 1


@pytest.mark.usefixtures("wide_window")
def test_two_promotions_at_once_exactly_one_wins(root):
    params = named_params(root, "race-two")
    client, (v1, v2, v3), outcomes = two_promotions(params, root, "race-two")
    assert one_wins(outcomes), outcomes
    winner = next(o for o in outcomes if isinstance(o, dict))["champion"]
    loser = v3 if winner == v2 else v2
    assert aliases(client, "race-two") == {"champion": winner, "previous_champion": v1}
    assert client.get_model_version("race-two", winner).tags["promotion.previous_champion"] == v1
    assert "promotion.previous_champion" not in client.get_model_version("race-two", loser).tags
    assert client.search_registered_models("name = 'race-two.lock'") == []  # released


@pytest.mark.usefixtures("wide_window")
def test_without_the_lock_the_same_race_is_not_serialised(root, monkeypatch):
    """The check above has teeth: with the lock replaced by nothing, both promotions pass the
    champion check (both report success, or the read-back catches the other's write)."""
    monkeypatch.setattr(operations, "registry_lock", lambda *a, **k: contextlib.nullcontext())
    params = named_params(root, "race-unlocked")
    _, _, outcomes = two_promotions(params, root, "race-unlocked")
    assert not one_wins(outcomes), outcomes
    assert not any(str(o).startswith("refused:") for o in outcomes), outcomes


def replaced_champion(root, name):
    """Three bare versions of `name`: v2 is champion, having replaced v1; v3 waits."""
    params, paths = named_params(root, name), Paths(root)
    client = client_of(params)
    v1, v2, v3 = bare_versions(client, name, 3)
    registry.apply_decision(params, paths, decision(client, name, v1, None))
    registry.apply_decision(params, paths, decision(client, name, v2, v1))
    return params, paths, client, (v1, v2, v3)


@pytest.mark.usefixtures("wide_window")
def test_promote_during_rollback_serialises(root):
    """v2 replaced v1; the gate passed v3 against v2. Rollback and that promotion at once end
    in one of the two serial outcomes, never a mix."""
    name = "race-rollback"
    params, paths, client, (v1, v2, v3) = replaced_champion(root, name)
    back, promoted = run_together(lambda: registry.rollback(params, paths),
                                  lambda: registry.apply_decision(params, paths,
                                                                  decision(client, name, v3, v2)))
    assert isinstance(back, dict), back
    tags = {v: client.get_model_version(name, v).tags for v in (v2, v3)}
    if isinstance(promoted, registry.RegistryError):  # rollback first, promotion refused
        assert back == {"model": name, "champion": v1, "replaced": v2, "previous_champion": None}
        assert aliases(client, name) == {"champion": v1}
        assert tags[v2]["rolled_back_to"] == v1 and "rolled_back_to" not in tags[v3]
    else:  # promotion first, then rollback undid it, visibly
        assert promoted["champion"] == v3
        assert back == {"model": name, "champion": v2, "replaced": v3, "previous_champion": v1}
        assert aliases(client, name) == {"champion": v2, "previous_champion": v1}
        assert tags[v3]["rolled_back_to"] == v2 and "rolled_back_to" not in tags[v2]


def test_a_decision_is_refused_after_a_rollback_moved_the_champion(root):
    """The usual order: the gate scored v3 against v2, then someone rolled back to v1."""
    name = "race-stale"
    params, paths, client, (v1, v2, v3) = replaced_champion(root, name)
    registry.rollback(params, paths)
    with pytest.raises(registry.RegistryError, match=f"is {v1} now.*against {v2}; nothing moved"):
        registry.apply_decision(params, paths, decision(client, name, v3, v2))
    assert aliases(client, name) == {"champion": v1}
    # a decision for the rolled-back version is refused too, even when its champion matches
    with pytest.raises(registry.RegistryError, match="was rolled back"):
        registry.apply_decision(params, paths, decision(client, name, v2, v1))
    assert registry.apply_decision(params, paths, decision(client, name, v2, v1),
                                   allow_rolled_back=True)["champion"] == v2


def test_a_dead_holder_is_broken_after_its_expiry_and_a_live_one_waits(root):
    params = named_params(root, "race-lock")
    client = client_of(params)
    bare_versions(client, "race-lock", 1)
    with registry.registry_lock(client, "race-lock", ttl_s=0.5):
        with pytest.raises(registry.RegistryBusy, match="held by"):
            with registry.registry_lock(client, "race-lock", wait_s=0.2):
                pass
        time.sleep(0.6)  # the first holder is now past its expiry: it counts as dead
        with registry.registry_lock(client, "race-lock", wait_s=5):
            pass
    assert client.search_registered_models("name = 'race-lock.lock'") == []


def mmguard(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=quiet_env())


@pytest.mark.slow  # two fresh interpreters importing mlflow
def test_two_promote_processes_at_once(root):
    """Two real `mmguard promote --decision` processes on one SQLite store: one moves the
    champion, the other exits 1 with a one-line refusal."""
    name = "race-processes"
    params = named_params(root, name)
    client = client_of(params)
    v1, v2, v3 = bare_versions(client, name, 3)
    registry.apply_decision(params, Paths(root), decision(client, name, v1, None))
    params_file = root / f"{name}.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    files = []
    for version in (v2, v3):
        files.append(root / f"{name}-{version}.json")
        files[-1].write_text(json.dumps(decision(client, name, version, v1).to_dict()))
    processes = [mmguard("promote", "--decision", str(f), "--params", str(params_file),
                         "--root", str(root), cwd=root) for f in files]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    refusal = next(err for code, _, err in results if code == 1).strip()
    assert refusal.startswith("refused:") and "\n" not in refusal and "Traceback" not in refusal
    printed = next(out for code, out, _ in results if code == 0)
    winner = json.loads(printed[printed.index("{"):])["champion"]
    assert aliases(client, name) == {"champion": winner, "previous_champion": v1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return model_dirs(tmp_path_factory.mktemp("tiny"), "hateful_memes", {"m": 1})["m"]


@pytest.mark.slow  # two fresh interpreters importing mlflow and torch
def test_register_twice_at_once_makes_one_version(root, tiny_model):
    """Two real `mmguard register` processes for the same model: one version, both report it,
    exactly one says it created it."""
    project = root / "register-twice"
    paths = Paths(project)
    install_candidate(paths, tiny_model)
    params = named_params(project, "race-register")
    client = client_of(params)
    client.search_experiments()  # the store exists before the race (creating it is not the point)
    params_file = project / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    processes = [mmguard("register", "--params", str(params_file), "--root", str(project),
                         cwd=project) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0, 0], results
    printed = [json.loads(out) for _, out, _ in results]  # stdout is the JSON alone
    assert {p["version"] for p in printed} == {"1"}
    assert sorted(p["created"] for p in printed) == [False, True]
    found = client.search_model_versions("name = 'race-register'")
    assert [str(v.version) for v in found] == ["1"]
    assert aliases(client, "race-register") == {"challenger": "1"}


@pytest.mark.slow
@pytest.mark.usefixtures("wide_window")
def test_two_promotions_at_once_on_a_real_tracking_server(tmp_path):
    port = free_port()
    server = tracking_server(tmp_path, port)
    try:
        params = named_params(tmp_path, "race-server", tracking_uri=f"http://127.0.0.1:{port}")
        client, (v1, v2, v3), outcomes = two_promotions(params, tmp_path, "race-server")
        assert one_wins(outcomes), outcomes
        winner = next(o for o in outcomes if isinstance(o, dict))["champion"]
        assert aliases(client, "race-server") == {"champion": winner, "previous_champion": v1}
    finally:
        stop_server(server)
