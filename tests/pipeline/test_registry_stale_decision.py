"""`mmguard promote --decision FILE` applies a decision only while it is the challenger's latest
gate run (its `gate.decision_id`, time, decision and champion tags): an old "promote" does not
move @champion after a later gate run said keep, even though the champion has not moved."""
from __future__ import annotations

import json

from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.paths import Paths
from tests.pipeline.registry_fixtures import (
    install_candidate, model_dirs, project_params, write_test_split,
)

TASK = "hateful_memes"


def test_promote_refuses_a_decision_that_a_later_gate_run_replaced(tmp_path):
    models = model_dirs(tmp_path, TASK, {"good": 1})
    paths = Paths(tmp_path / "project")
    write_test_split(paths, TASK, oracle_dir=models["good"])
    lenient = project_params(paths.root, TASK)  # floors at 0: the good model passes
    strict = project_params(paths.root, TASK, min_auroc=1.0)  # AUROC must be > 1: nothing does
    files = {}
    for label, params in (("lenient", lenient), ("strict", strict)):
        files[label] = paths.root / f"{label}.yaml"
        files[label].write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    client = MlflowClient(tracking_uri=lenient.registry.tracking_uri,
                          registry_uri=lenient.registry.tracking_uri)
    name = registry.model_name(lenient)

    def mmguard(*args, params="lenient"):
        return CliRunner().invoke(app, [*args, "--params", str(files[params]),
                                        "--root", str(paths.root)])

    def gate(label, params):
        out = paths.root / f"{label}.json"
        assert mmguard("gate", "--out", str(out), params=params).exit_code == 0
        return out, json.loads(out.read_text())

    def champion():
        return {a for v in client.search_model_versions(f"name = '{name}'")
                for a in v.aliases if a == "champion"}

    install_candidate(paths, models["good"])
    assert mmguard("register").exit_code == 0
    path_a, a = gate("a", "lenient")
    assert a["decision"] == "promote" and a["champion_seen"] is None
    tags = client.get_model_version(name, "1").tags
    assert (tags["gate.decision_id"], tags["gate.evaluated_at"]) == (a["decision_id"],
                                                                      a["evaluated_at"])
    path_b, b = gate("b", "strict")  # a later gate run: keep, the champion still none
    assert b["decision"] == "keep" and b["decision_id"] != a["decision_id"]

    stale = mmguard("promote", "--decision", str(path_a))
    assert stale.exit_code == 1, stale.output
    assert stale.output.startswith("refused: the decision is stale") and "nothing moved" in \
        stale.output
    assert f"id {b['decision_id']}" in stale.output and "said keep" in stale.output
    assert f"id {a['decision_id']}" in stale.output and "says promote" in stale.output
    assert champion() == set()

    # keep's file edited into a promote: the challenger's tags still say keep
    path_b.write_text(json.dumps(b | {"decision": "promote"}))
    assert mmguard("promote", "--decision", str(path_b)).exit_code == 1
    # a file from before decision ids: nothing to match it against
    old = {k: v for k, v in a.items() if k not in ("decision_id", "evaluated_at")}
    path_a.write_text(json.dumps(old))
    result = mmguard("promote", "--decision", str(path_a))
    assert result.exit_code == 1 and "no decision_id" in result.output
    assert champion() == set()

    path_c, c = gate("c", "lenient")  # a fresh decision applies
    assert c["decision"] == "promote"
    applied = mmguard("promote", "--decision", str(path_c))
    assert applied.exit_code == 0, applied.output
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
