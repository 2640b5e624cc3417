"""The alias history: promote, rollback, a manual move and register's @challenger are recorded in
the registry in order, with who, when, from, to and why, and `mmguard history` shows them."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.paths import Paths
from pipeline.registry import history
from pipeline.registry.store import RegistryError
from tests.pipeline.registry_fixtures import bare_versions, named_params
from tests.pipeline.test_registry_races import client_of, decision

NAME = "history-model"


@pytest.fixture
def project(tmp_path):
    params = named_params(tmp_path, NAME)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    client = client_of(params)
    versions = bare_versions(client, NAME, 3)
    return params, params_file, client, versions


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_promote_rollback_and_a_manual_move_are_recorded_in_order(project, tmp_path):
    params, params_file, client, (v1, v2, v3) = project
    started = datetime.now(timezone.utc).replace(microsecond=0)
    common = ["--params", str(params_file), "--root", str(tmp_path)]

    registry.apply_decision(params, Paths(tmp_path), decision(client, NAME, v1, None))
    registry.apply_decision(params, Paths(tmp_path), decision(client, NAME, v2, v1))
    cli("rollback", "--why", "v2 flags too much", "--who", "oncall@pager", *common)
    cli("alias", "set", "champion", v3, "--why", "hotfix model, gate bypassed", *common)

    events = json.loads(cli("history", "--json", *common).stdout)
    assert [(e["alias"], e["from"], e["to"], e["action"]) for e in events] == [
        ("champion", None, v1, "promote"),
        ("champion", v1, v2, "promote"),
        ("champion", v2, v1, "rollback"),
        ("champion", v1, v3, "manual"),
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[2]["who"] == "oncall@pager" and events[2]["why"] == "v2 flags too much"
    assert events[3]["why"] == "hotfix model, gate bypassed" and "@" in events[3]["who"]
    assert "gate decision" in events[1]["why"]
    for event in events:
        at = datetime.fromisoformat(event["at"])
        assert at.tzinfo is not None and started <= at <= started + timedelta(minutes=10)
    # what the registry says now is where the last event points
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v3

    table = cli("history", "--alias", "champion", *common).stdout.splitlines()
    assert len(table) == 5 and "manual" in table[-1] and "hotfix model" in table[-1]
    assert cli("history", "--alias", "challenger", "--json", *common).stdout.strip() == "[]"


def test_rollback_records_the_challenger_it_takes_off_the_demoted_version(project, tmp_path):
    params, _, client, (v1, v2, _) = project
    registry.apply_decision(params, Paths(tmp_path), decision(client, NAME, v1, None))
    with registry.registry_lock(client, NAME):
        history.move(client, NAME, "challenger", v2, "register", "register: a new model")
    registry.apply_decision(params, Paths(tmp_path), decision(client, NAME, v2, v1))
    registry.rollback(params, Paths(tmp_path))

    events = history.read(params, tmp_path)
    assert [(e["alias"], e["from"], e["to"], e["action"]) for e in events] == [
        ("champion", None, v1, "promote"),
        ("challenger", None, v2, "register"),
        ("champion", v1, v2, "promote"),
        ("champion", v2, v1, "rollback"),
        ("challenger", v2, None, "rollback"),
    ]
    assert events[3]["why"] == "rolled back to the previous champion"
    assert [e["alias"] for e in history.read(params, tmp_path, "challenger")] == ["challenger"] * 2


def test_manual_moves_need_a_reason_a_real_version_and_a_tracked_alias(project, tmp_path):
    params, params_file, client, (v1, _, _) = project
    with pytest.raises(RegistryError, match="--why"):
        history.set_alias(params, tmp_path, "champion", v1, why="  ")
    with pytest.raises(RegistryError, match="no version 99"):
        history.set_alias(params, tmp_path, "champion", "99", why="typo")
    with pytest.raises(RegistryError, match="only champion and challenger"):
        history.set_alias(params, tmp_path, "previous_champion", v1, why="no")
    result = CliRunner().invoke(app, ["alias", "set", "champion", "99", "--why", "typo",
                                      "--params", str(params_file), "--root", str(tmp_path)])
    assert result.exit_code == 1 and "no version 99" in result.output
    assert history.read(params, tmp_path) == []  # nothing moved, nothing recorded
    # setting an alias where it already points is no move
    history.set_alias(params, tmp_path, "challenger", v1, why="first")
    assert history.set_alias(params, tmp_path, "challenger", v1, why="again")["moved"] is False
    assert len(history.read(params, tmp_path)) == 1


def test_a_long_reason_is_cut_and_the_event_stays_readable(project, tmp_path):
    params, _, _, (v1, _, _) = project
    history.set_alias(params, tmp_path, "champion", v1, why="because " * 2000)
    [event] = history.read(params, tmp_path)
    assert event["to"] == v1 and event["why"].startswith("because") and event["why"].endswith(
        "...")
