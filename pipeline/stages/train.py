"""train stage: shards + params.model/train → the best model, per-epoch metrics, an MLflow run.

Order matters: params and shard metadata are checked first, then the model is built (an unknown
model name or a missing weights file fails here), and only then is any sample read.
Under torchrun every rank runs this; rank 0 alone logs to MLflow and writes files.

Writes: artifacts/model/ (save_model), artifacts/train/{metrics.json, history.csv,
mlflow_run.json, stats.json}, and checkpoints in artifacts/scratch/checkpoints/.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
from pathlib import Path

import torch
import torch.distributed as torch_dist

from pipeline import atomic, tracking
from pipeline.errors import StageFailed
from pipeline.model import build_model, count_parameters, save_model, total_loss
from pipeline.model import data, training
from pipeline.model.checkpoints import CheckpointStore
from pipeline.metrics import primary_metric
from pipeline.params import Params
from pipeline.paths import Paths

log = logging.getLogger(__name__)
STAGE = "train"


def checkpoint_dir(paths: Paths) -> Path:
    """Scratch space outside every DVC out (and git- and dvc-ignored): `dvc repro` never deletes
    it, so a killed or retried train task resumes after its last finished epoch, and the train
    stage needs no `persist` out, which would switch DVC's run-cache off."""
    return paths.artifacts / "scratch" / "checkpoints"


def params_hash(params: Params, sizes: dict) -> str:
    """What makes a checkpoint resumable: the model, the training config, the task, the data."""
    relevant = {"task": params.task, "model": params.model.model_dump(mode="json"),
                "train": params.train.model_dump(mode="json"), "sizes": sizes}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def check_inputs(params: Params, paths: Paths) -> dict:
    """Fail with a clear message before any work; returns sizes.json."""
    try:
        sizes = data.read_sizes(paths.shards)
    except (data.DataError, ValueError) as exc:
        raise StageFailed(str(exc)) from None
    if sizes.get("task") != params.task:
        raise StageFailed(f"shards are for task {sizes.get('task')!r} but params.task is "
                          f"{params.task!r}: re-run the shard stage")
    train = params.train
    split_size = data.train_split_size(sizes)
    if split_size == 0:
        raise StageFailed("the train split is empty (empty shard list)")
    if train.batch_size > split_size:
        raise StageFailed(f"train.batch_size {train.batch_size} is larger than the train split "
                          f"({split_size} samples)")
    if train.contrastive_weight > 0 and data.train_valid_pairs(sizes) == 0:
        raise StageFailed("train.contrastive_weight > 0 but the train split holds no valid "
                          "pairs; set train.contrastive_weight: 0")
    try:
        data.class_shards(paths.shards, sizes)
        data.split_shards(paths.shards, "val")
        data.class_weights(sizes, sizes["class_names"], train.upsampling)
    except data.DataError as exc:
        raise StageFailed(str(exc)) from None
    return sizes


def _build(params: Params):
    try:
        return build_model(params)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise StageFailed(f"cannot build model {params.model.name!r}: {exc}") from None


def _resume_run_id(store: CheckpointStore, digest: str) -> str | None:
    found = store.latest()
    if found and found[1].params_hash == digest and not found[1].finished:
        return found[1].extra.get("mlflow_run_id")
    return None


def write_history(history: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _finite(value):
    # metrics.json must stay valid JSON: NaN (one-class val split) becomes null
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _log_and_print(row: dict, epoch: int) -> None:
    """Per-epoch metrics go to MLflow and, as one line, to the console (training takes minutes)."""
    tracking.log_epoch(row, epoch)
    shown = " ".join(f"{key}={value:.4g}" for key, value in row.items()
                     if key in ("train_loss", "val_loss", "samples_per_s") or
                     (key.startswith("val_") and isinstance(value, float)))
    print(f"epoch {epoch}: {shown}", flush=True)


def run(params: Params, paths: Paths, step_hook: training.StepHook | None = None) -> dict:
    dist = training.init_distributed(params.train.device)
    try:
        return _run(params, paths, dist, step_hook)
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _run(params: Params, paths: Paths, dist: training.DistContext,
         step_hook: training.StepHook | None) -> dict:
    sizes = check_inputs(params, paths)
    training.seed_everything(params.train.seed + dist.rank)
    model = _build(params)
    try:
        device = training.resolve_device(params.train.device, dist)
    except RuntimeError as exc:
        raise StageFailed(str(exc)) from None
    model.set_grad_checkpointing(params.train.grad_checkpointing)
    cached = model.attach_cache_if_built(paths.embeddings)
    if cached is not None:
        print(f"train: frozen towers read the embedding cache ({cached} entries)", flush=True)
    model.to(device)
    counts = count_parameters(model)

    train_p = params.train
    steps = data.steps_per_epoch(train_p, sizes, dist.world_size)
    store = CheckpointStore(checkpoint_dir(paths))
    digest = params_hash(params, sizes)

    def train_batches(epoch: int):
        return data.train_loader(paths.shards, sizes, train_p, model.preprocess, model.tokenize,
                                 epoch=epoch, rank=dist.rank)

    def val_batches():
        return data.eval_loader(paths.shards, "val", sizes, params.evaluate.batch_size,
                                model.preprocess, model.tokenize, num_workers=train_p.num_workers,
                                rank=dist.rank, world_size=dist.world_size)

    paths.train_dir.mkdir(parents=True, exist_ok=True)
    run_info: dict = {}
    tracking_ctx = (tracking.training_run(params, paths.root, _resume_run_id(store, digest),
                                          run_name=f"train-{params.task}")
                    if dist.is_main else contextlib.nullcontext({}))
    with tracking_ctx as run_info:
        if dist.is_main:
            import mlflow

            mlflow.log_metrics({"params_total": counts["total"],
                                "params_trainable": counts["trainable"]})
            mlflow.set_tags({"device": str(device), "world_size": str(dist.world_size)})
            if model.packaged is not None:
                _log_weights(model.packaged.record())
        try:
            result = training.fit(
                model, train_batches=train_batches, val_batches=val_batches,
                steps_per_epoch=steps, train=train_p, task=params.task, loss_fn=total_loss,
                device=device, checkpoints=store, params_hash=digest,
                log=_log_and_print if dist.is_main else None, dist=dist,
                step_hook=step_hook, extra={"mlflow_run_id": run_info.get("run_id")})
        except (data.DataError, ValueError) as exc:
            raise StageFailed(f"training failed: {exc}") from None
        if dist.is_main:
            summary = _write_outputs(params, paths, model, result, counts, device, dist, steps,
                                     run_info, store)
    if dist.enabled:
        torch_dist.barrier()
    return summary if dist.is_main else {"rank": dist.rank, "finished": True}


def _log_weights(record: dict) -> None:
    """Each pretrained weights file's package, sha256 and licence, as tags and one JSON file."""
    import mlflow

    for tower, weights in record.items():
        mlflow.set_tags({f"weights.{tower}.{key}": str(weights[key])
                         for key in ("package", "file", "sha256", "licence", "source")})
    mlflow.log_dict(record, "pretrained_weights.json")


def _write_outputs(params, paths, model, result, counts, device, dist, steps, run_info,
                   store) -> dict:
    import mlflow

    save_model(model, paths.model_dir)
    best_row = result.history[[r["epoch"] for r in result.history].index(result.best_epoch)]
    val_keys = [k for k in best_row if k.startswith("val_")]
    last = result.history[-1]
    metrics = {
        "best_epoch": result.best_epoch,
        "primary_metric": "val_" + primary_metric(params.task),
        "best": {k: _finite(best_row[k]) for k in val_keys},
        "final": {k: _finite(last[k]) for k in val_keys},
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "samples_per_s": last["samples_per_s"],
        "peak_memory_mb": max(r["peak_memory_mb"] for r in result.history),
        "skipped_train": sum(r["skipped_train"] for r in result.history),
        "skipped_val": sum(r["skipped_val"] for r in result.history),
        "samples_val": last["samples_val"],
    }
    atomic.write_json(paths.train_dir / "metrics.json", metrics)
    write_history(result.history, paths.train_dir / "history.csv")
    tracking.write_run_info(run_info, paths.train_dir / "mlflow_run.json")
    mlflow.log_metrics({f"best_{k}": v for k, v in metrics["best"].items() if v is not None})
    mlflow.log_artifacts(str(store.best_dir(result.best_epoch)), artifact_path="best_checkpoint")
    mlflow.log_artifact(str(paths.model_dir / "config.json"), artifact_path="best_checkpoint")
    stats = {"stage": STAGE, "task": params.task, "device": str(device),
             "world_size": dist.world_size, "steps_per_epoch": steps,
             "parameters": counts, "resumed_from_epoch": result.resumed_from,
             "global_steps": result.global_step, **metrics, "mlflow": run_info,
             "embedding_cache": model.cache_report()}
    atomic.write_json(paths.stats(STAGE), stats)
    return stats
