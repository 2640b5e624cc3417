"""MLflow model registry: register a challenger, promote it through the gate, roll back.

Aliases only (MLflow's stages are deprecated):
- `challenger`         the version `register` made last
- `champion`           the version in service; it moves only through `promote`'s gate
- `previous_champion`  the champion the current one replaced; `rollback` returns to it

Every promoted version carries a `promotion.previous_champion` tag, so repeated rollbacks walk back
the chain of champions instead of flipping between two versions.

The gate scores the challenger AND the champion on the current test shards through their
registered pyfunc models, so the comparison is on the same data, never against a stored number
computed on an older test set.
"""
from __future__ import annotations

import base64
import json
import math
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import requests
import yaml

from pipeline import tracking
from pipeline.params import GateParams, Params
from pipeline.paths import Paths
from pipeline.taxonomy import class_names

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous_champion"
SERVING_CODE = Path(__file__).with_name("serving.py")
PACKAGE_DIR = Path(__file__).parent
# What the served model imports, pinned to the versions installed here.
SERVING_REQUIREMENTS = ("mlflow", "torch", "torchvision", "open_clip_torch", "peft",
                        "transformers", "safetensors", "pillow", "numpy", "pandas", "pydantic",
                        "PyYAML", "scikit-learn", "webdataset")
MAX_TAG_CHARS = 5000


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no challenger, nothing to roll back to, …)."""


class RegistryUnavailable(RegistryError):
    """The tracking server / registry store cannot be reached; nothing was changed."""


# ---------------------------------------------------------------- the gate (pure)

@dataclass
class GateDecision:
    promoted: bool
    reasons: list[str]
    challenger_version: str | None = None
    champion_version: str | None = None
    challenger_metrics: dict = field(default_factory=dict)
    champion_metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"promoted": self.promoted, "reasons": self.reasons,
                "challenger_version": self.challenger_version,
                "champion_version": self.champion_version,
                "challenger_metrics": self.challenger_metrics,
                "champion_metrics": self.champion_metrics}


def gate_metrics(task: str) -> tuple[str, ...]:
    """The metrics of record the gate compares: AUROC (binary); top-1 and top-2 (seven classes)."""
    return ("auroc",) if len(class_names(task)) == 2 else ("top1", "top2")


def _fmt(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def decide(task: str, gate: GateParams, checks_passed: bool, challenger: dict,
           champion: dict | None) -> tuple[bool, list[str]]:
    """Apply the promotion gate. Returns (promote?, one reason per criterion, PASS or FAIL)."""
    reasons = [("PASS" if checks_passed else "FAIL") + ": prediction checks "
               + ("passed" if checks_passed else "did not pass (or no report was registered)")]
    minimum = {"auroc": (gate.min_auroc, ">"), "top1": (gate.min_top1, ">="),
               "top2": (gate.min_top2, ">=")}
    for name in gate_metrics(task):
        value = float(challenger.get(name, math.nan))
        floor, op = minimum[name]
        ok = math.isfinite(value) and (value > floor if op == ">" else value >= floor)
        reasons.append(f"{'PASS' if ok else 'FAIL'}: {name} {_fmt(value)} {op} {floor}")
    if champion is None:
        reasons.append("PASS: no champion yet, nothing to regress against")
    else:
        for name in gate_metrics(task):
            new, old = float(challenger.get(name, math.nan)), float(champion.get(name, math.nan))
            if not math.isfinite(old):
                reasons.append(f"PASS: champion {name} is undefined on this test set")
                continue
            ok = math.isfinite(new) and new >= old - gate.regression_tolerance
            reasons.append(f"{'PASS' if ok else 'FAIL'}: {name} {_fmt(new)} vs champion "
                           f"{_fmt(old)} (tolerance {gate.regression_tolerance})")
    return all(r.startswith("PASS") for r in reasons), reasons


# ---------------------------------------------------------------- connection

def model_name(params: Params) -> str:
    return params.registry.model_name.format(task=params.task)


def ensure_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server is down (MLflow's client
    would otherwise retry with back-off for minutes before failing)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"MLflow tracking server {uri} is unreachable ({exc}); "
                                  "the registry was not changed") from None


@contextmanager
def _registry_errors(uri: str):
    """Turn connection failures inside MLflow calls into one clear RegistryUnavailable."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"lost the MLflow tracking server {uri}: {exc}") from None
    except MlflowException as exc:
        text = str(exc)
        if any(s in text for s in ("Max retries", "Connection", "connection", "API request")):
            raise RegistryUnavailable(f"lost the MLflow tracking server {uri}: {text[:300]}") \
                from None
        raise


def _client(params: Params, root: Path):
    from mlflow import MlflowClient

    from pipeline import tracking

    uri = tracking.tracking_uri(params, root)
    ensure_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


@contextmanager
def using_store(uri: str):
    """Point MLflow's process-wide tracking and registry URIs at `uri` for one operation (the
    fluent log/register/load calls read them), then put them back. mlflow.set_tracking_uri also
    exports MLFLOW_TRACKING_URI, which would otherwise override params.registry.tracking_uri for
    everything that runs later in the same process (an Airflow worker, a test session)."""
    import mlflow

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None unsets it and the env var
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _alias_version(client, name: str, alias: str):
    """The ModelVersion an alias points at, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or \
                "not found" in str(exc).lower():
            return None
        raise


# ---------------------------------------------------------------- lineage

def _git_revision(root: Path) -> str:
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10)
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _dvc_lock_hashes(root: Path) -> dict[str, str]:
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    tags = {}
    for stage, entry in stages.items():
        outs = [f"{o.get('path')}:{o.get('md5', '')}" for o in entry.get("outs", [])]
        if outs:
            tags[f"dvc.lock.{stage}"] = ",".join(outs)[:MAX_TAG_CHARS]
    return tags


def _data_md5(root: Path) -> str:
    path = root / "data.dvc"
    if not path.exists():
        return "untracked"
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs", [])
    return str(outs[0].get("md5", "unknown")) if outs else "unknown"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def lineage_tags(params: Params, paths: Paths) -> dict[str, str]:
    """Everything needed to say where a version came from: data, code, pipeline, config, scores."""
    root = paths.root
    checks = _read_json(paths.checks_dir / "report.json")
    metrics = _read_json(paths.evaluate_dir / "metrics.json")
    tags = {"data.dvc.md5": _data_md5(root), "git.revision": _git_revision(root),
            "task": params.task,
            "checks.passed": (str(bool(checks.get("passed"))).lower() if checks else "missing"),
            "checks.failed_errors": ",".join(checks.get("failed_errors", [])) or "none"}
    tags |= _dvc_lock_hashes(root)
    tags |= {k: v[:MAX_TAG_CHARS] for k, v in
             tracking.flatten(params.model_dump(mode="json", by_alias=True), "param.").items()}
    # The test split's headline numbers; per-source slices and matrices stay in metrics.json.
    headline = {k: v for k, v in metrics.get("test", {}).items()
                if not isinstance(v, (dict, list))}
    tags |= tracking.flatten(headline, "metric.test.")
    return tags


# ---------------------------------------------------------------- register

def _signature_and_example(task: str):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from pipeline.prediction_checks import probability_column
    from pipeline.serving import DEFAULT_BATCH_SIZE

    names = class_names(task)
    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "text")])
    outputs = Schema([ColSpec("string", "label"), ColSpec("long", "label_index")]
                     + [ColSpec("double", probability_column(n)) for n in names])
    params = ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)])
    example = pd.DataFrame({"image": [example_image_b64()], "text": ["a caption to check"]})
    return ModelSignature(inputs=inputs, outputs=outputs, params=params), example


def example_image_b64(size: int = 64) -> str:
    """A small PNG as base64: the input example and the smoke-test payload."""
    import io

    from PIL import Image

    pixels = (np.indices((size, size)).sum(axis=0) * 4 % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pinned_requirements() -> list[str]:
    pins = []
    for package in SERVING_REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def _training_run_id(client, paths: Paths) -> str | None:
    """The training run from artifacts/train/mlflow_run.json, when it lives in this store."""
    info = _read_json(paths.train_dir / "mlflow_run.json")
    run_id = info.get("run_id")
    if not run_id:
        return None
    try:
        client.get_run(run_id)
        return run_id
    except Exception:  # recorded in another tracking store: start a fresh run here instead
        return None


def register(params: Params, paths: Paths) -> str:
    """Log the pyfunc model, register a new version with lineage tags, alias it `challenger`."""
    import mlflow

    if not (paths.model_dir / "config.json").exists():
        raise RegistryError(f"no trained model in {paths.model_dir}: run `mmguard train` first")
    client, uri = _client(params, paths.root)
    name = model_name(params)
    tags = lineage_tags(params, paths)
    signature, example = _signature_and_example(params.task)
    with using_store(uri), _registry_errors(uri):
        run_id = _training_run_id(client, paths)
        if run_id is None:
            tracking.set_up(params, paths.root)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else "register") as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(SERVING_CODE), code_paths=[str(PACKAGE_DIR)],
                artifacts={"model_dir": str(paths.model_dir)}, signature=signature,
                input_example=example, pip_requirements=pinned_requirements())
            tags["mlflow.source_run_id"] = run.info.run_id
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    print(f"registered {name} version {version.version} as @{CHALLENGER} "
          f"(checks.passed={tags['checks.passed']})")
    return str(version.version)


# ---------------------------------------------------------------- promote

def test_set_frame(paths: Paths) -> pd.DataFrame:
    """The current test shards as a pyfunc input frame: base64 image bytes, text, label."""
    from pipeline.model.data import read_tar, split_shards

    rows, errors = [], []
    for shard in split_shards(paths.shards, "test"):
        for raw in read_tar(shard, errors):
            if "jpg" not in raw or "cls" not in raw:
                errors.append((raw.get("__key__", "?"), "missing jpg or cls"))
                continue
            rows.append({"image": base64.b64encode(raw["jpg"]).decode("ascii"),
                         "text": raw.get("txt", b"").decode("utf-8", errors="replace"),
                         "label": int(raw["cls"].decode("ascii").strip())})
    if errors:
        raise RegistryError(f"unreadable test samples, cannot score fairly: {errors[:5]}")
    if not rows:
        raise RegistryError(f"no test samples under {paths.shards / 'test'}")
    return pd.DataFrame(rows)


def score_version(name: str, version: str, test: pd.DataFrame, task: str) -> dict:
    """The gate metrics of one registered version on the given test frame."""
    import mlflow

    from pipeline.model import metrics
    from pipeline.prediction_checks import probability_column

    from pipeline.monitoring import capture

    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    with capture.paused():  # the gate's test set is not traffic
        output = model.predict(test[["image", "text"]])
    probs = output[[probability_column(n) for n in class_names(task)]].to_numpy(dtype=float)
    labels = test["label"].to_numpy(dtype=int)
    if len(class_names(task)) == 2:
        return {"auroc": metrics.auroc(labels, probs[:, 1])}
    return {"top1": metrics.top_k_accuracy(labels, probs, 1),
            "top2": metrics.top_k_accuracy(labels, probs, 2)}


def _record_decision(client, name: str, decision: GateDecision) -> None:
    version = decision.challenger_version
    tags = {"gate.decision": "promoted" if decision.promoted else "rejected",
            "gate.reasons": " | ".join(decision.reasons)[:MAX_TAG_CHARS],
            "gate.champion_version": decision.champion_version or "none",
            "gate.evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tags |= {f"gate.challenger.{k}": _fmt(v) for k, v in decision.challenger_metrics.items()}
    tags |= {f"gate.champion.{k}": _fmt(v) for k, v in decision.champion_metrics.items()}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote(params: Params, paths: Paths) -> GateDecision:
    """Move `champion` to the challenger when it passes the gate; record the decision either way."""
    client, uri = _client(params, paths.root)
    name = model_name(params)
    with using_store(uri), _registry_errors(uri):
        challenger = _alias_version(client, name, CHALLENGER)
        if challenger is None:
            raise RegistryError(f"{name} has no @{CHALLENGER}: run `mmguard register` first")
        champion = _alias_version(client, name, CHAMPION)
        if champion is not None and champion.version == challenger.version:
            decision = GateDecision(False, [f"version {challenger.version} is already champion"],
                                    str(challenger.version), str(champion.version))
            _print_decision(name, decision)
            return decision

        test = test_set_frame(paths)
        challenger_scores = score_version(name, challenger.version, test, params.task)
        champion_scores = (score_version(name, champion.version, test, params.task)
                           if champion is not None else None)
        checks_passed = challenger.tags.get("checks.passed") == "true"
        promoted, reasons = decide(params.task, params.registry.gate, checks_passed,
                                   challenger_scores, champion_scores)
        decision = GateDecision(promoted, reasons, str(challenger.version),
                                str(champion.version) if champion else None,
                                challenger_scores, champion_scores or {})
        _record_decision(client, name, decision)
        if promoted:
            if champion is not None:
                client.set_model_version_tag(name, challenger.version,
                                             "promotion.previous_champion", champion.version)
                client.set_registered_model_alias(name, PREVIOUS, champion.version)
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
    _print_decision(name, decision)
    return decision


def _print_decision(name: str, decision: GateDecision) -> None:
    verdict = "PROMOTED to @champion" if decision.promoted else "NOT promoted"
    print(f"{name} version {decision.challenger_version}: {verdict}")
    for reason in decision.reasons:
        print(f"  {reason}")


# ---------------------------------------------------------------- rollback

def rollback(params: Params, root: Path = Path(".")) -> dict:
    """Point `champion` back at `previous_champion`; walk the chain one step further back."""
    client, uri = _client(params, root)
    name = model_name(params)
    with _registry_errors(uri):
        previous = _alias_version(client, name, PREVIOUS)
        if previous is None:
            raise RegistryError(f"{name} has no @{PREVIOUS}: nothing to roll back to")
        current = _alias_version(client, name, CHAMPION)
        client.set_registered_model_alias(name, CHAMPION, previous.version)
        if current is not None:
            client.set_model_version_tag(name, current.version, "rolled_back_to",
                                         previous.version)
        older = previous.tags.get("promotion.previous_champion")
        if older:
            client.set_registered_model_alias(name, PREVIOUS, older)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
    result = {"model": name, "champion": str(previous.version),
              "replaced": str(current.version) if current else None,
              "previous_champion": older}
    print(f"{name}: @champion rolled back from version {result['replaced']} to "
          f"{result['champion']}")
    return result
