"""register, gate, apply a decision (promote), roll back, check out: the registry's operations.

Every operation that moves an alias does so inside the registry lock (store.registry_lock), after
re-reading the aliases it depends on, so concurrent operations serialise:
- `register` is idempotent on the model's content hash: a model already registered gets its
  existing version back (and @challenger), never a second identical version.
- `gate` scores the challenger and the champion and records its decision; it moves nothing.
- `apply_decision` is compare-and-set: it moves @champion only while @champion is still the
  version the gate scored against (`champion_seen`).
- `rollback` marks the version it demotes (`rolled_back_to`) and takes @challenger off it, so the
  gate refuses it until someone asks for it explicitly (`allow_rolled_back`).
"""
from __future__ import annotations

import base64
import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline import tracking
from pipeline.operating_points import Served
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.registry import history, lineage, packaging, report
from pipeline.registry.gate import (
    KEEP, PROMOTE, GateDecision, GateRows, ModelRows, decide, fmt, point_scores, shadow_reason,
)
from pipeline.registry.store import (
    CHALLENGER, CHAMPION, MAX_TAG_CHARS, PREVIOUS, RegistryError, alias_number, alias_version,
    client_for, ensure_model, model_name, registry_errors, registry_lock, set_alias_verified,
    version_or_none,
)
from pipeline.taxonomy import class_names

ROLLED_BACK_TAG = "rolled_back_to"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- register

def _version_with_content(client, name: str, content: str):
    """The newest version of `name` whose model has this content hash, or None."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{lineage.CONTENT_TAG}` = '{content}'")
    return max(found, key=lambda v: int(v.version), default=None)


def _training_run_id(client, paths: Paths) -> str | None:
    """The training run from artifacts/train/mlflow_run.json, when it lives in this store."""
    info = lineage._read_json(paths.train_dir / "mlflow_run.json")
    run_id = info.get("run_id")
    if not run_id:
        return None
    try:
        client.get_run(run_id)
        return run_id
    except Exception:  # recorded in another tracking store: start a fresh run here instead
        return None


def _keep_challenger(client, name: str, version: str, created: bool) -> dict:
    with registry_lock(client, name):
        history.move(client, name, CHALLENGER, version, "register",
                     "register found this model already registered")
    return {"version": version, "created": created}


def register(params: Params, paths: Paths, params_file: Path | None = None) -> dict:
    """Register artifacts/model as a version of the model, alias @challenger, with lineage tags,
    and log dvc.lock, data.dvc and params.yaml on its MLflow run. Idempotent: a model whose
    content hash is registered already returns that version. {"version": "N", "created": bool}"""
    import mlflow

    if not (paths.model_dir / "config.json").exists():
        raise RegistryError(f"no trained model in {paths.model_dir}: run `mmguard train` first")
    client, uri = client_for(params, paths.root)
    name = model_name(params)
    tags = lineage.lineage_tags(params, paths, params_file)
    content = tags[lineage.CONTENT_TAG]
    with tracking.using_uri(uri), registry_errors(uri):
        ensure_model(client, name)
        existing = _version_with_content(client, name, content)
        if existing is not None:  # same model again, or a retried register task
            result = _keep_challenger(client, name, str(existing.version), created=False)
        else:
            run_id = _training_run_id(client, paths)
            experiment = None if run_id else tracking.experiment_id(params, uri, paths.root)
            with mlflow.start_run(run_id=run_id, experiment_id=experiment,
                                  run_name=None if run_id else "register") as run:
                # the served model applies evaluate's temperature and flags at its threshold
                info = packaging.log_pyfunc(paths.model_dir, params,
                                            lineage.served_operating_point(paths))
                tags[lineage.REPRO_PATH_TAG] = lineage.log_repro_files(paths, content,
                                                                       params_file)
                lineage.log_text_peer(paths)  # beside evaluate's eval_* metrics on the run
                tags["mlflow.source_run_id"] = run.info.run_id
            with registry_lock(client, name):
                # a concurrent register of the same model may have won while we logged it
                existing = _version_with_content(client, name, content)
                if existing is None:
                    version = mlflow.register_model(info.model_uri, name, tags=tags)
                    existing, created = version, True
                else:
                    created = False
                history.move(client, name, CHALLENGER, str(existing.version), "register",
                             "register: a new model" if created else
                             "register found this model already registered")
            result = {"version": str(existing.version), "created": created}
    # stderr: the CLI's stdout carries only the JSON result, for the DAG to parse
    print(f"{'registered' if result['created'] else 'already registered:'} {name} version "
          f"{result['version']} as @{CHALLENGER} (checks.passed={tags['checks.passed']})",
          file=sys.stderr)
    return result


# ---------------------------------------------------------------- gate

def gate_test_frame(paths: Paths) -> pd.DataFrame:
    """The current test shards as a pyfunc input frame: base64 image bytes, text, label, and
    the row's id and source (from the sample's metadata) plus the clean manifest's grouping
    columns when it has any: the slices the gate checks."""
    from pipeline import contracts
    from pipeline.model.data import read_tar, split_shards

    rows, errors = [], []
    for shard in split_shards(paths.shards, "test"):
        for raw in read_tar(shard, errors):
            if "jpg" not in raw or "cls" not in raw:
                errors.append((raw.get("__key__", "?"), "missing jpg or cls"))
                continue
            meta = json.loads(raw["json"]) if "json" in raw else {}
            item_id = str(meta.get("id") or raw.get("__key__"))
            rows.append({"id": item_id,
                         "source": str(meta.get("source") or item_id.split(":", 1)[0]),
                         "image": base64.b64encode(raw["jpg"]).decode("ascii"),
                         "text": raw.get("txt", b"").decode("utf-8", errors="replace"),
                         "label": int(raw["cls"].decode("ascii").strip())})
    if errors:
        raise RegistryError(f"unreadable test samples, cannot score fairly: {errors[:5]}")
    if not rows:
        raise RegistryError(f"no test samples under {paths.shards / 'test'}")
    frame = pd.DataFrame(rows)
    if paths.manifest.exists():
        present = [c for c in contracts.GROUPING_COLUMNS
                   if c in contracts.parquet_columns(paths.manifest)]
        if present:
            groups = pd.read_parquet(paths.manifest, columns=["id", *present])
            frame = frame.merge(groups, on="id", how="left")
    return frame


def predict_version(name: str, version: str, test: pd.DataFrame) -> pd.DataFrame:
    """One registered version's served answers on the test frame (pinned to that version)."""
    import mlflow

    from pipeline import serving
    from pipeline.monitoring import capture

    # pinned: this version's answers, never a swapped-in @champion (pipeline/hot_swap.py)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}", model_config=serving.PINNED)
    with capture.paused():  # the gate's test set is not traffic
        return model.predict(test[["image", "text"]])


def model_rows(output: pd.DataFrame, task: str, tags: dict[str, str]) -> ModelRows:
    """A served output frame as the gate's ModelRows: probabilities, and (binary) the
    `decision` column with the FPR its threshold was chosen for (version tag)."""
    from pipeline.prediction_checks import probability_column

    probs = output[[probability_column(n) for n in class_names(task)]].to_numpy(dtype=float)
    target = Served.from_tags(tags).fpr_target
    if len(class_names(task)) != 2 or "decision" not in output.columns or target is None:
        return ModelRows(probs)
    return ModelRows(probs, output["decision"].to_numpy(dtype=int), target)


def slice_columns(test: pd.DataFrame, task: str) -> dict:
    """The slices the gate checks: source, class and each grouping column present."""
    from pipeline import contracts

    names = class_names(task)
    found = {"source": test["source"].to_numpy(dtype=object),
             "class": [names[i] for i in test["label"]]}
    for column in contracts.GROUPING_COLUMNS:
        if column in test.columns:
            found[column] = test[column].fillna("(none)").to_numpy(dtype=object)
    return found


def score_version(name: str, version: str, test: pd.DataFrame, task: str) -> dict:
    """The gate metrics of one registered version on the given test frame."""
    rows = model_rows(predict_version(name, version, test), task, {})
    return point_scores(task, test["label"].to_numpy(dtype=int), rows)


def _rolled_back_reason(version) -> str | None:
    target = version.tags.get(ROLLED_BACK_TAG)
    if target is None:
        return None
    return (f"FAIL: version {version.version} was rolled back (to version {target}); "
            "it is promoted again only when asked explicitly (--allow-rolled-back)")


def _gate_run() -> dict:
    """The id and time of one gate run, for its decision and the challenger's tags."""
    return {"decision_id": uuid.uuid4().hex, "evaluated_at": _now()}


def _record_decision(client, decision: GateDecision) -> None:
    tags = {"gate.decision": decision.decision,
            "gate.reasons": " | ".join(decision.reasons)[:MAX_TAG_CHARS],
            "gate.champion_version": decision.champion_seen or "none",
            "gate.decision_id": decision.decision_id,
            "gate.evaluated_at": decision.evaluated_at}
    tags |= {f"gate.challenger.{k}": fmt(v) for k, v in decision.challenger_metrics.items()}
    tags |= {f"gate.champion.{k}": fmt(v) for k, v in decision.champion_metrics.items()}
    tags |= _evidence_tags(decision.evidence)
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.challenger, key, value)


def _interval_tags(prefix: str, interval: dict | None) -> dict[str, str]:
    if not interval:
        return {}
    return {f"{prefix}.{side}": fmt(interval.get(key))
            for side, key in (("lower", "lower"), ("upper", "upper"))} | {
        prefix: fmt(interval.get("point"))}


def _evidence_tags(evidence: dict) -> dict[str, str]:
    """The bootstrap rule's numbers as version tags: `gate.challenger.<m>.lower|upper`,
    `gate.delta.<m>[.lower|.upper]`, `gate.operating.*`, `gate.slices.*`, `gate.interval`
    (level and resamples) and what the point-estimate rule would have said."""
    if not evidence:
        return {}
    tags = {"gate.interval": f"{evidence['level']:.4g} percentile, {evidence['resamples']} "
                             f"paired resamples within class, seed {evidence['seed']}"}
    for name, interval in evidence.get("challenger", {}).items():
        tags |= {k: v for k, v in _interval_tags(f"gate.challenger.{name}", interval).items()
                 if k != f"gate.challenger.{name}"}  # the point is tagged already
    for name, interval in evidence.get("delta", {}).items():
        tags |= _interval_tags(f"gate.delta.{name}", interval)
    operating = evidence.get("operating") or {}
    if operating:
        tags["gate.operating.fpr_target"] = fmt(operating["fpr_target"])
        for side in ("challenger", "champion"):
            for rate in ("recall", "fpr"):
                tags |= _interval_tags(f"gate.operating.{side}.{rate}",
                                       (operating.get(side) or {}).get(rate))
        tags |= _interval_tags("gate.operating.recall_delta", operating.get("recall_delta"))
    table = evidence.get("slices") or []
    regressed = [f"{r['column']}={r['value']}:{r['metric']}" for r in table if r["regressed"]]
    tags["gate.slices.compared"] = str(sum(1 for r in table if r["compared"]))
    tags["gate.slices.regressed"] = ",".join(regressed)[:MAX_TAG_CHARS] or "none"
    old = evidence.get("point_estimate_rule")
    if old:
        tags["gate.point_estimate_rule"] = PROMOTE if old["promote"] else KEEP
    if evidence.get("report_artifact"):
        tags["gate.report"] = evidence["report_artifact"]
    return tags


def _gate_rows(params: Params, test: pd.DataFrame, outputs: dict, tags: dict) -> GateRows:
    task = params.task
    labels = test["label"].to_numpy(dtype=int)
    rows = {side: model_rows(outputs[side], task, tags[side]) for side in outputs}
    return GateRows(labels, rows["challenger"], rows.get("champion"),
                    slice_columns(test, task))


def gate_folder(paths: Paths) -> Path:
    """Where the gate writes its report and per-row answers (the DAG's decision.json too)."""
    return paths.artifacts / "gate"


def _write_gate_files(client, paths: Paths, decision: GateDecision, challenger_run: str | None,
                      test: pd.DataFrame, outputs: dict) -> None:
    """The decision report (HTML) and both models' per-row answers on the same ids (parquet),
    in artifacts/gate/ and on the challenger's MLflow run under gate/<decision_id>/."""
    from pipeline import atomic

    folder = gate_folder(paths)
    folder.mkdir(parents=True, exist_ok=True)
    answers = test.drop(columns=["image", "text"]).copy()
    for side, output in outputs.items():
        for column in output.columns:
            if column.startswith("prob_") or column == "decision":
                answers[f"{side}_{column}"] = output[column].to_numpy()
    rows_file, report_file = folder / "rows.parquet", folder / "report.html"
    atomic.write_with(rows_file, lambda tmp: answers.to_parquet(tmp, index=False))
    atomic.write_text(report_file, report.render(decision))
    decision.evidence["report"] = str(report_file)
    if challenger_run:
        where = f"gate/{decision.decision_id}"
        client.log_artifact(challenger_run, str(report_file), where)
        client.log_artifact(challenger_run, str(rows_file), where)
        decision.evidence["report_artifact"] = f"runs:/{challenger_run}/{where}/report.html"


def _shadow_rows(params: Params, paths: Paths, version: str) -> int | None:
    """Shadow rows `version` scored in monitoring.traffic_window; None when the capture log
    cannot be read (the reason says so). Read only when the gate requires any."""
    if params.registry.gate.require_shadow_rows <= 0:
        return None
    from pipeline.monitoring import shadow  # pyarrow filesystems: only when asked for

    try:
        return shadow.shadow_rows(params, paths.root, version=version)
    except OSError as err:
        print(f"gate: cannot read the capture log for shadow rows: {err}", file=sys.stderr)
        return None


def gate(params: Params, paths: Paths, allow_rolled_back: bool = False) -> GateDecision:
    """Score @challenger against @champion on the current test set and decide; moves nothing.
    The decision and its reasons become tags of the challenger version (except when the
    challenger already is champion: its record of the gate that promoted it stays)."""
    client, uri = client_for(params, paths.root)
    name = model_name(params)
    with tracking.using_uri(uri), registry_errors(uri):
        challenger = alias_version(client, name, CHALLENGER)
        if challenger is None:
            raise RegistryError(f"{name} has no @{CHALLENGER}: run `mmguard register` first")
        champion = alias_version(client, name, CHAMPION)
        seen = str(champion.version) if champion is not None else None
        version = str(challenger.version)
        refusal = None if allow_rolled_back else _rolled_back_reason(challenger)
        if seen == version:
            decision = GateDecision(KEEP, name, version, seen,
                                    [f"PASS: version {version} is already champion, "
                                     "nothing to move"])
        elif refusal:
            decision = GateDecision(KEEP, name, version, seen, [refusal], **_gate_run())
            _record_decision(client, decision)
        else:
            # both versions answer the same rows (same ids), through their served pyfuncs
            test = gate_test_frame(paths)
            outputs = {"challenger": predict_version(name, version, test)}
            tags = {"challenger": challenger.tags}
            if seen is not None:
                outputs["champion"] = predict_version(name, seen, test)
                tags["champion"] = champion.tags
            rows = _gate_rows(params, test, outputs, tags)
            promoted, reasons, evidence = decide(
                params.task, params.registry.gate, challenger.tags.get("checks.passed") == "true",
                rows, text_peer=lineage.text_peer_scores(challenger.tags),
                test_samples=len(test))
            for side, found in evidence["calibration"].items():
                found |= lineage.calibration_record(tags[side])
            shadow = shadow_reason(params.registry.gate.require_shadow_rows,
                                   _shadow_rows(params, paths, version), seen is not None)
            if shadow is not None:
                reasons.append(shadow)
                promoted = promoted and shadow.startswith("PASS")
            labels = test["label"].to_numpy(dtype=int)
            decision = GateDecision(
                PROMOTE if promoted else KEEP, name, version, seen, reasons,
                point_scores(params.task, labels, rows.challenger),
                {} if rows.champion is None else point_scores(params.task, labels,
                                                                rows.champion),
                **_gate_run(), evidence=evidence)
            _write_gate_files(client, paths, decision, challenger.run_id, test, outputs)
            _record_decision(client, decision)
    print_decision(decision)
    return decision


def print_decision(decision: GateDecision) -> None:
    verdict = ("passes the gate: promote" if decision.promoted
               else "does not replace the champion: keep")
    print(f"{decision.name} version {decision.challenger} {verdict} "
          f"(champion seen: {decision.champion_seen or 'none'})")
    for reason in decision.reasons:
        print(f"  {reason}")


# ---------------------------------------------------------------- promote

def _stale_reason(challenger, decision: GateDecision) -> str | None:
    """Why `decision` is not the challenger's latest gate run (its `gate.*` tags), or None. A
    later run (other thresholds, other test data, a rolled-back mark) may have said keep."""
    if not decision.decision_id:
        return ("the decision carries no decision_id (written by an older gate), so it cannot "
                f"be matched to version {decision.challenger}'s latest gate run")
    tags = challenger.tags
    latest = (tags.get("gate.decision_id"), tags.get("gate.evaluated_at"),
              tags.get("gate.decision"), tags.get("gate.champion_version"))
    if latest == (decision.decision_id, decision.evaluated_at, decision.decision,
                  decision.champion_seen or "none"):
        return None
    return (f"the decision is stale: version {decision.challenger}'s latest gate run "
            f"(id {latest[0] or 'none'} at {latest[1] or 'never'}) said {latest[2] or 'nothing'} "
            f"against champion {latest[3] or 'none'}; this decision (id "
            f"{decision.decision_id} at {decision.evaluated_at}) says {decision.decision} "
            f"against {decision.champion_seen or 'none'}")


def apply_decision(params: Params, paths: Paths, decision: GateDecision,
                   allow_rolled_back: bool = False) -> dict:
    """Apply a gate decision with compare-and-set: @champion moves to the challenger only while
    it still is `champion_seen`; otherwise RegistryError and nothing moves. KEEP moves nothing."""
    client, uri = client_for(params, paths.root)
    name = model_name(params)
    if decision.name != name:
        raise RegistryError(f"the decision is about {decision.name}, these params name {name}")
    result = {"model": name, "decision": decision.decision, "moved": False,
              "champion": decision.champion_seen}
    if not decision.promoted:
        print(f"{name}: gate said keep; @champion stays at {decision.champion_seen or 'none'}")
        return result
    target = decision.challenger
    with registry_errors(uri), registry_lock(client, name):
        current = alias_number(client, name, CHAMPION)
        if current != decision.champion_seen:
            raise RegistryError(
                f"refused: @champion of {name} is {current or 'none'} now, the gate scored "
                f"version {target} against {decision.champion_seen or 'none'}; nothing moved "
                "(run the gate again)")
        challenger = version_or_none(client, name, target)
        if challenger is None:
            raise RegistryError(f"refused: {name} has no version {target}; nothing moved")
        stale = _stale_reason(challenger, decision)
        if stale:
            raise RegistryError(f"refused: {stale}; nothing moved (run the gate again)")
        refusal = _rolled_back_reason(challenger)
        if refusal and not allow_rolled_back:
            raise RegistryError(f"refused: {refusal[len('FAIL: '):]}; nothing moved")
        if refusal:
            client.delete_model_version_tag(name, target, ROLLED_BACK_TAG)
        if current is not None:
            client.set_model_version_tag(name, target, "promotion.previous_champion", current)
            set_alias_verified(client, name, PREVIOUS, current)
        client.set_model_version_tag(name, target, "promotion.promoted_at", _now())
        history.move(client, name, CHAMPION, target, "promote",
                     f"gate decision {decision.decision_id} (champion seen: "
                     f"{decision.champion_seen or 'none'})")
    print(f"{name} version {target}: PROMOTED to @{CHAMPION} (was {current or 'none'})")
    return result | {"moved": True, "champion": target, "replaced": current}


def promote(params: Params, paths: Paths, allow_rolled_back: bool = False) -> GateDecision:
    """Gate, then apply the decision (compare-and-set against the champion the gate saw)."""
    decision = gate(params, paths, allow_rolled_back)
    apply_decision(params, paths, decision, allow_rolled_back)
    return decision


# ---------------------------------------------------------------- rollback

def rollback(params: Params, paths: Paths, why: str = "", who: str | None = None) -> dict:
    """Point @champion back at @previous_champion; walk the chain one step further back. The
    demoted version is tagged `rolled_back_to` and loses @challenger. `why`/`who` go to the
    alias history."""
    client, uri = client_for(params, paths.root)
    name = model_name(params)
    with registry_errors(uri), registry_lock(client, name):
        previous = alias_version(client, name, PREVIOUS)
        if previous is None:
            raise RegistryError(f"{name} has no @{PREVIOUS}: nothing to roll back to")
        current = alias_number(client, name, CHAMPION)
        why = why or "rolled back to the previous champion"
        history.move(client, name, CHAMPION, str(previous.version), "rollback", why, who)
        if current is not None:
            client.set_model_version_tag(name, current, ROLLED_BACK_TAG, str(previous.version))
            client.set_model_version_tag(name, current, "rolled_back_at", _now())
            if alias_number(client, name, CHALLENGER) == current:
                history.remove(client, name, CHALLENGER, "rollback",
                               f"version {current} was rolled back", who)
        older = previous.tags.get("promotion.previous_champion")
        if older:
            set_alias_verified(client, name, PREVIOUS, older)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
    result = {"model": name, "champion": str(previous.version), "replaced": current,
              "previous_champion": older}
    print(f"{name}: @champion rolled back from version {current} to {result['champion']}; "
          f"version {current} is marked {ROLLED_BACK_TAG}")
    return result


# ---------------------------------------------------------------- checkout

def checkout(params: Params, paths: Paths, version: str) -> dict:
    """Restore a registered version's dvc.lock, data.dvc and params.yaml into the workspace and
    let DVC restore its data, stage outputs and model (`dvc pull` with a default remote, else
    `dvc checkout`). Writes files only; never runs git."""
    client, uri = client_for(params, paths.root)
    name = model_name(params)
    with registry_errors(uri):
        found = version_or_none(client, name, str(version))
        if found is None:
            raise RegistryError(f"{name} has no version {version}")
        restored = lineage.restore_files(client, uri, found, paths.root)
    command = lineage.dvc_restore(paths.root)
    expected = found.tags.get(lineage.CONTENT_TAG)
    model = "absent"
    if (paths.model_dir / "config.json").exists():
        model = "matches" if lineage.content_hash(paths.model_dir) == expected else "differs"
        if model == "differs":
            raise RegistryError(f"{paths.model_dir} after `dvc {command}` is not the model of "
                                f"version {version} (content hash differs)")
    result = {"model": name, "version": str(version), "restored": restored,
              "dvc": command, "model_dir": model}
    print(f"checked out {name} version {version}: {', '.join(restored)} restored, "
          f"`dvc {command}` done, model {model}")
    return result
