"""The train stage on the real tiny model and real tar shards: metrics, MLflow, checkpoints,
exact resume, input validation. Plus the pure helpers (metrics, schedule, AMP choice)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from pipeline import tracking
from pipeline.errors import StageFailed
from pipeline.model import load_model
from pipeline.model import metrics as M
from pipeline.model import training
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import train as train_stage
from tests.model.shard_writer import write_shards

SMALL = {"train": {0: 16, 1: 16}, "val": {0: 8, 1: 8}, "test": {0: 4, 1: 4}}


def make_params(root: Path, **train):
    base = {"epochs": 3, "batch_size": 8, "lr": 2e-3, "warmup_steps": 2, "shuffle_buffer": 16,
            "early_stopping_patience": 0, "seed": 7}
    return parse_params({"train": {**base, **train},
                         "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}})


def make_root(tmp: Path, counts=SMALL, task="hateful_memes", corrupt=None) -> Paths:
    write_shards(tmp / "artifacts" / "shards", task=task, counts=counts, per_shard=8,
                 corrupt=corrupt)
    return Paths(tmp)


class Interrupt(Exception):
    """Stands in for the process being killed mid-epoch."""


def interrupt_at(epoch: int, step: int):
    def hook(current_epoch: int, global_step: int) -> None:
        if current_epoch == epoch and global_step == step:
            raise Interrupt
    return hook


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """One 3-epoch run, shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("unbroken")
    paths = make_root(tmp, corrupt={"val": 2})
    summary = train_stage.run(make_params(tmp), paths)
    return paths, summary


def _weights(paths: Paths) -> dict:
    return load_file(str(paths.model_dir / "model.safetensors"))


# ---------------------------------------------------------------- the stage's outputs

def test_outputs_metrics_history_and_a_loadable_model(unbroken):
    paths, summary = unbroken
    metrics = json.loads((paths.train_dir / "metrics.json").read_text())
    assert metrics["primary_metric"] == "val_auroc"
    assert set(metrics["best"]) == {"val_loss", "val_auroc", "val_accuracy", "val_f1"}
    assert metrics["skipped_val"] == 2 * metrics["epochs_run"]  # 2 corrupt samples per pass
    with (paths.train_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(float(r["samples_per_s"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]  # LoRA
    model = load_model(paths.model_dir)
    from PIL import Image
    probs = model.predict_proba([Image.new("RGB", (40, 40), (220, 30, 30))], ["a calm post"])
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1) < 1e-5
    # the saved model is the best epoch's checkpoint
    best = load_file(str(train_stage.checkpoint_dir(paths) / f"best-{metrics['best_epoch']:04d}"
                         / "model.safetensors"))
    saved = _weights(paths)
    assert all(torch.equal(saved[k], best[k]) for k in saved)


def test_mlflow_run_has_params_per_epoch_metrics_and_the_best_checkpoint(unbroken):
    paths, _ = unbroken
    info = json.loads((paths.train_dir / "mlflow_run.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{paths.root.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.experiment_id == info["experiment_id"]
    assert client.get_experiment(info["experiment_id"]).name == "mmguard"
    assert run.data.params["train.batch_size"] == "8"
    assert run.data.params["model.name"] == "tiny"
    assert run.data.metrics["params_trainable"] > 0
    assert run.data.tags["device"] == "cpu"
    history = client.get_metric_history(info["run_id"], "val_auroc")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert len(client.get_metric_history(info["run_id"], "samples_per_s")) == 3
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "best_checkpoint")}
    assert "best_checkpoint/model.safetensors" in artifacts


# ---------------------------------------------------------------- resume

def test_interrupted_run_resumes_to_the_same_final_weights(unbroken, tmp_path):
    reference, _ = unbroken
    paths = make_root(tmp_path, corrupt={"val": 2})
    params = make_params(tmp_path)
    # 4 optimizer steps per epoch: die in the middle of epoch 2 (0-based 1)
    with pytest.raises(Interrupt):
        train_stage.run(params, paths, step_hook=interrupt_at(epoch=1, step=6))
    assert not (paths.model_dir / "model.safetensors").exists()
    summary = train_stage.run(params, paths)
    assert summary["resumed_from_epoch"] == 0
    expected, got = _weights(reference), _weights(paths)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # the resumed run continued the same MLflow run, with every epoch logged once
    first = json.loads((paths.train_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=first["tracking_uri"])
    steps = [m.step for m in client.get_metric_history(first["run_id"], "val_loss")]
    assert sorted(steps) == [0, 1, 2]


def test_finished_or_incompatible_checkpoints_start_fresh(tmp_path):
    paths = make_root(tmp_path)
    params = make_params(tmp_path, epochs=1)
    assert train_stage.run(params, paths)["resumed_from_epoch"] is None
    # finished: a second `dvc repro` trains again from scratch
    assert train_stage.run(params, paths)["resumed_from_epoch"] is None
    with pytest.raises(Interrupt):
        train_stage.run(make_params(tmp_path, epochs=2), paths, step_hook=interrupt_at(1, 5))
    # other params (lr) than the interrupted run's: its checkpoint is not resumed
    summary = train_stage.run(make_params(tmp_path, epochs=2, lr=1e-3), paths)
    assert summary["resumed_from_epoch"] is None and summary["epochs_run"] == 2


def test_early_stopping_stops_when_the_metric_stalls(tmp_path):
    # the binary val AUROC reaches 1.0 at once on this easy data and cannot improve after
    paths = make_root(tmp_path)
    summary = train_stage.run(make_params(tmp_path, epochs=6, early_stopping_patience=1), paths)
    assert summary["stopped_early"] and summary["epochs_run"] < 6


# ---------------------------------------------------------------- validation before work

def test_batch_larger_than_the_train_split_fails_clearly(tmp_path):
    paths = make_root(tmp_path)
    with pytest.raises(StageFailed, match="batch_size 64 is larger than the train split"):
        train_stage.run(make_params(tmp_path, batch_size=64), paths)


def test_contrastive_loss_without_valid_pairs_fails_clearly(tmp_path):
    counts = {"train": {1: 12}, "val": {0: 4, 1: 4}, "test": {0: 2, 1: 2}}
    paths = make_root(tmp_path, counts=counts)
    with pytest.raises(StageFailed, match="no valid pairs"):
        train_stage.run(make_params(tmp_path), paths)


def test_missing_shards_fail_clearly(tmp_path):
    with pytest.raises(StageFailed, match="sizes.json not found"):
        train_stage.run(make_params(tmp_path), Paths(tmp_path))


@pytest.mark.parametrize("model, message", [
    ({"name": "no-such-clip"}, "not an open_clip model"),
    ({"pretrained": "/nowhere/weights.safetensors"}, "does not exist"),
])
def test_model_errors_surface_before_any_data_is_read(tmp_path, model, message):
    paths = make_root(tmp_path)
    # the val shards are unreadable: reaching them would fail differently
    for shard in (paths.shards / "val").glob("*.tar"):
        shard.write_bytes(b"not a tar")
    params = parse_params({"model": model, "train": {"batch_size": 8},
                           "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    with pytest.raises(StageFailed, match=message):
        train_stage.run(params, paths)
    assert not (tmp_path / "m.db").exists()  # failed before MLflow was touched


def test_moderation7_reports_top1_top2_macro_f1(tmp_path):
    counts = {"train": {k: 4 for k in range(7)}, "val": {k: 2 for k in range(7)},
              "test": {k: 1 for k in range(7)}}
    paths = make_root(tmp_path, counts=counts, task="moderation7")
    params = parse_params({"task": "moderation7",
                           "train": {"epochs": 1, "batch_size": 7, "upsampling": {"Hate": 2.0}},
                           "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    summary = train_stage.run(params, paths)
    assert summary["primary_metric"] == "val_top1"
    assert set(summary["best"]) == {"val_loss", "val_top1", "val_top2", "val_macro_f1"}
    assert summary["best"]["val_top2"] >= summary["best"]["val_top1"]


# ---------------------------------------------------------------- pure helpers

def test_metrics_on_known_values():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    out = M.binary_metrics(labels, probs)
    assert out["auroc"] == pytest.approx(1.0)
    assert (out["tp"], out["tn"], out["fp"], out["fn"]) == (2, 1, 1, 0)
    assert out["accuracy"] == 0.75 and out["f1"] == pytest.approx(0.8)
    assert math.isnan(M.auroc(np.array([1, 1]), np.array([0.2, 0.9])))
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    multi = M.multiclass_metrics(np.array([0, 2, 1]), three)
    assert multi["top1"] == pytest.approx(1 / 3) and multi["top2"] == pytest.approx(1.0)
    assert multi["per_class_recall"] == [1.0, 0.0, 0.0]
    assert M.task_metrics("moderation7", np.array([0, 2, 1]), three).keys() == {
        "top1", "top2", "macro_f1"}
    with pytest.raises(ValueError, match="shape"):
        M.binary_metrics(np.array([0, 1]), np.array([0.3, 0.7]))
    with pytest.raises(ValueError, match="labels must lie"):
        M.top_k_accuracy(np.array([0, 5]), three[:2], 1)


def test_warmup_then_cosine_schedule():
    factor = training.warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) < factor(5) < factor(9) <= 1.0
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-9)


def test_no_weight_decay_on_biases_norms_and_scalars():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.register_parameter("logit_scale", torch.nn.Parameter(torch.ones(())))
    decay, no_decay = training.param_groups(model, 0.1)
    assert decay["params"] == [model[0].weight] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_amp_choice():
    cpu = torch.device("cpu")
    assert training.resolve_amp("auto", cpu) == (None, False)
    assert training.resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    assert training.resolve_amp("off", cpu) == (None, False)


def test_tracking_uri_env_override_relative_sqlite_and_file_store(tmp_path, monkeypatch):
    params = parse_params({})
    assert tracking.tracking_uri(params, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(params, tmp_path) == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ValueError, match="file store"):
        tracking.tracking_uri(params, tmp_path)
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "None"}
