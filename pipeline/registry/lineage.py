"""Where a model version came from, and how to get that exact workspace back.

Register tags each version with its lineage (data hash, git revision, dvc.lock outputs, params,
test metrics, the model's content hash) and logs the run's REPRO_FILES onto the MLflow run that
holds the model, under `reproducibility/<content hash>/`, with their sha256 as version tags.
`checkout` downloads them again, verifies the hashes, writes them into the workspace and lets
DVC restore the data, the stage outputs and the model. Nothing here runs git.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline import operating_points, text_peer, tracking
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.registry.store import MAX_TAG_CHARS, RegistryError

REPRO_FILES = ("dvc.lock", "data.dvc", "params.yaml")
REPRO_FOLDER = "reproducibility"
CONTENT_TAG = "model.content_sha256"
REPRO_PATH_TAG = "repro.artifact_path"
MISSING = "missing"
TEXT_PEER_TEST = "text_peer.test."  # version tags of the text peer's test scores


def repro_tag(file_name: str) -> str:
    return f"repro.{file_name}.sha256"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(model_dir: Path) -> str:
    """sha256 over every file of the model directory (relative path and bytes, sorted): the
    same weights and config give the same hash wherever and whenever they were written."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


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


def repro_sources(paths: Paths, params_file: Path | None = None) -> dict[str, Path]:
    """The files that pin a run, by the name they have in the workspace."""
    return {"dvc.lock": paths.root / "dvc.lock", "data.dvc": paths.root / "data.dvc",
            "params.yaml": params_file or paths.root / "params.yaml"}


def lineage_tags(params: Params, paths: Paths, params_file: Path | None = None) -> dict[str, str]:
    """Everything needed to say where a version came from: data, code, pipeline, config, scores,
    the model's content hash and the hashes of the files `checkout` restores."""
    root = paths.root
    checks = _read_json(paths.checks_dir / "report.json")
    metrics = _read_json(paths.evaluate_dir / "metrics.json")
    tags = {"data.dvc.md5": _data_md5(root), "git.revision": _git_revision(root),
            "task": params.task,
            "checks.passed": (str(bool(checks.get("passed"))).lower() if checks else "missing"),
            "checks.failed_errors": ",".join(checks.get("failed_errors", [])) or "none",
            CONTENT_TAG: content_hash(paths.model_dir)}
    tags |= {repro_tag(name): sha256_file(path) if path.is_file() else MISSING
             for name, path in repro_sources(paths, params_file).items()}
    tags |= _dvc_lock_hashes(root)
    tags |= {k: v[:MAX_TAG_CHARS] for k, v in
             tracking.flatten(params.model_dump(mode="json", by_alias=True), "param.").items()}
    # The test split's headline numbers; per-source slices and matrices stay in metrics.json.
    headline = {k: v for k, v in metrics.get("test", {}).items()
                if not isinstance(v, (dict, list))}
    tags |= tracking.flatten(headline, "metric.test.")
    return tags | text_peer_tags(paths) | operating_tags(paths)


CALIBRATION = "calibration."  # evaluate's calibration error before/after the temperature


def served_operating_point(paths: Paths) -> operating_points.Served:
    """What the served model applies, from evaluate's metrics.json: the temperature (1.0 when
    evaluate recorded none) and, binary, the primary FPR target's val-chosen threshold. No
    threshold when evaluate wrote no operating points: the served model then returns no
    `decision`, and the gate refuses it."""
    evaluation = _read_json(paths.evaluate_dir / "metrics.json")
    temperature = float((evaluation.get("calibration") or {}).get("temperature") or 1.0)
    point = operating_points.primary_point(evaluation.get("operating_points") or {})
    if not point or point.get("threshold") is None:
        return operating_points.Served(temperature)
    return operating_points.Served(temperature, float(point["threshold"]),
                                   float(point["fpr_target"]))


def operating_tags(paths: Paths) -> dict[str, str]:
    """`operating.temperature`, binary `operating.threshold` and `operating.fpr_target`, and
    evaluate's test ECE before and after the temperature (`calibration.test_ece_*`)."""
    served = served_operating_point(paths).as_config()[operating_points.CONFIG_KEY]
    tags = {f"{operating_points.TAG_PREFIX}{k}": repr(v) for k, v in served.items()}
    block = _read_json(paths.evaluate_dir / "metrics.json").get("calibration") or {}
    for key in ("test_ece_before", "test_ece_after"):
        if isinstance(block.get(key), (int, float)):
            tags[f"{CALIBRATION}{key}"] = repr(float(block[key]))
    return tags


def calibration_record(tags: dict[str, str]) -> dict:
    """A version's temperature and evaluate's test ECE before/after it, from its tags."""
    found = {"temperature": operating_points.Served.from_tags(tags).temperature}
    for name, key in (("evaluate_test_ece_before", f"{CALIBRATION}test_ece_before"),
                      ("evaluate_test_ece_after", f"{CALIBRATION}test_ece_after")):
        try:
            found[name] = float(tags[key])
        except (KeyError, ValueError):
            continue
    return found


def text_peer_tags(paths: Paths) -> dict[str, str]:
    """The run's text peer (artifacts/text_peer/metrics.json) as version tags, so the gate
    judges a version by the registry alone: `text_peer.test.<metric>` (its test scores on the
    model's test rows), `text_peer.c`, `text_peer.fallback`, `text_peer.gain` (model minus
    peer). No tags when the stage did not run: the gate then refuses the version."""
    peer = _read_json(text_peer.metrics_path(paths))
    if not peer:
        return {}
    headline = {k: v for k, v in peer.get("test", {}).items()
                if not isinstance(v, (dict, list))}
    return tracking.flatten(headline, TEXT_PEER_TEST) | {
        "text_peer.c": str(peer.get("c")), "text_peer.fallback": str(peer.get("fallback")),
        "text_peer.gain": str(peer.get("gain"))}


def text_peer_scores(tags: dict[str, str]) -> dict | None:
    """The text peer's test scores back from a version's tags (an undefined one as NaN), with
    `samples` as an int; None when the version has none."""
    scores = {}
    for key, text in tags.items():
        if key.startswith(TEXT_PEER_TEST):
            try:
                scores[key[len(TEXT_PEER_TEST):]] = float(text)
            except ValueError:  # "None": undefined on its test rows
                scores[key[len(TEXT_PEER_TEST):]] = math.nan
    samples = scores.pop("samples", math.nan)
    if math.isfinite(samples):
        scores["samples"] = int(samples)
    return scores or None


def log_text_peer(paths: Paths) -> None:
    """Log the text peer's scores on the active MLflow run beside evaluate's `eval_*`:
    `text_peer_{val,test}_<metric>`, `text_peer_gain`, and its metrics.json under text_peer/."""
    import mlflow

    path = text_peer.metrics_path(paths)
    peer = _read_json(path)
    if not peer:
        return
    values = {f"text_peer_{split}_{key}": value for split in ("val", "test")
              for key, value in peer.get(split, {}).items()}
    values["text_peer_gain"] = peer.get("gain")
    mlflow.log_metrics({k: float(v) for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mlflow.log_artifact(str(path), artifact_path="text_peer")


def log_repro_files(paths: Paths, content: str, params_file: Path | None = None) -> str:
    """Log the run's pinning files onto the active MLflow run; the artifact folder used. The
    folder is per model content, so a run that holds two models never mixes their files."""
    import mlflow

    folder = f"{REPRO_FOLDER}/{content[:16]}"
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in repro_sources(paths, params_file).items():
            if path.is_file():  # copied: the artifact keeps its workspace name
                (Path(tmp) / name).write_bytes(path.read_bytes())
        mlflow.log_artifacts(tmp, artifact_path=folder)
    return folder


# ---------------------------------------------------------------- checkout

def _dvc(root: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, text=True,
                            capture_output=True, env=os.environ | {"DVC_NO_ANALYTICS": "1"})
    if not check:
        return result.stdout.strip() if result.returncode == 0 else ""
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise RegistryError(f"`dvc {' '.join(args)}` failed: {lines[-1]}")
    return result.stdout.strip()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.checkout-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def restore_files(client, uri: str, version, root: Path) -> list[str]:
    """Download a version's pinning files, check their hashes, write them into `root`."""
    import mlflow

    tags = version.tags
    folder = tags.get(REPRO_PATH_TAG)
    if not folder:
        raise RegistryError(f"version {version.version} has no reproducibility files (it was "
                            "registered before they were logged); it cannot be checked out")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=folder, dst_path=tmp, tracking_uri=uri))
        restored = {}
        for name in REPRO_FILES:
            expected = tags.get(repro_tag(name), MISSING)
            if expected == MISSING:
                continue
            source = local / name
            if not source.is_file() or sha256_file(source) != expected:
                raise RegistryError(f"{name} logged for version {version.version} does not match "
                                    f"its sha256 tag; nothing was written")
            restored[name] = source.read_bytes()
        for name, data in restored.items():  # all verified before the first write
            _write_atomically(root / name, data)
    return list(restored)


def dvc_restore(root: Path) -> str:
    """`dvc pull` when a default remote is configured (a fresh clone has no cache), else
    `dvc checkout` from the local cache. Returns the command that ran."""
    # `dvc remote default` exits 1 when none is set
    command = "pull" if _dvc(root, "remote", "default", check=False) else "checkout"
    _dvc(root, command)
    return command
