"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

Layout under `artifacts/scratch/checkpoints/` (outside DVC's outs, see stages/train.py):
  epoch-0003/  model.safetensors, optimizer.safetensors, rng.safetensors, state.json
  best-0002/   model.safetensors (the best epoch's weights so far)
A directory is written under a `.tmp` name and renamed when complete, so a run killed while saving
leaves the previous checkpoint intact. `state.json` holds the params hash: a checkpoint from other
params (or other shards) is never resumed, and neither is a finished run's (`finished: true`),
since DVC keeps this folder across `dvc repro` (persist: true).
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

STATE_FILE = "state.json"


@dataclass
class TrainerState:
    """What the loop needs, beyond tensors, to continue exactly where it stopped."""

    epoch: int                      # the last completed epoch (0-based)
    global_step: int
    best_metric: float | None
    best_epoch: int | None
    epochs_without_improvement: int
    history: list[dict]
    params_hash: str
    finished: bool = False
    extra: dict = field(default_factory=dict)  # e.g. the MLflow run id to continue


# ---------------------------------------------------------------- optimizer / RNG ↔ tensors+JSON

def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict, meta: dict) -> dict:
    slots: dict[int, dict] = {}
    for source in (tensors, meta["scalars"]):
        for key, value in source.items():
            index, name = key.split("/", 1)
            slots.setdefault(int(index), {})[name] = value
    return {"state": slots, "param_groups": meta["param_groups"]}


def rng_to_tensors() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def restore_rng(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- the store

class CheckpointStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _epoch_dirs(self, prefix: str) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.glob(f"{prefix}-*")
                      if p.is_dir() and not p.name.endswith(".tmp"))

    def _write_dir(self, name: str, write) -> Path:
        final, tmp = self.folder / name, self.folder / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def latest(self) -> tuple[Path, TrainerState] | None:
        for folder in reversed(self._epoch_dirs("epoch")):
            try:
                raw = json.loads((folder / STATE_FILE).read_text())
                return folder, TrainerState(**raw)
            except (OSError, ValueError, TypeError):
                continue  # unreadable: fall back to an older one
        return None

    def resumable(self, params_hash: str) -> tuple[Path, TrainerState] | None:
        """The latest checkpoint when it belongs to these params and its run is unfinished;
        otherwise None, after clearing stale checkpoints so the run starts fresh."""
        found = self.latest()
        if found is None:
            return None
        _, state = found
        if state.finished or state.params_hash != params_hash:
            self.clear()
            return None
        # best weights written after this checkpoint belong to epochs about to be re-run
        for best in self._epoch_dirs("best"):
            if int(best.name.split("-")[1]) > state.epoch:
                shutil.rmtree(best)
        return found

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             state: TrainerState) -> Path:
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        rng_tensors, rng_meta = rng_to_tensors()

        def write(tmp: Path) -> None:
            save_model(model, str(tmp / "model.safetensors"))
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            (tmp / "training.json").write_text(json.dumps({
                "optimizer": opt_meta, "rng": rng_meta,
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}))
            # written last: its presence marks a complete checkpoint
            (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))

        path = self._write_dir(f"epoch-{state.epoch:04d}", write)
        for older in self._epoch_dirs("epoch"):
            if older != path:
                shutil.rmtree(older)
        for best in self._epoch_dirs("best"):
            if state.best_epoch is not None and best.name != f"best-{state.best_epoch:04d}":
                shutil.rmtree(best)
        return path

    def restore(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler,
                scaler: torch.amp.GradScaler, restore_rng_state: bool = True) -> None:
        load_model(model, str(folder / "model.safetensors"), device=str(_device_of(model)))
        meta = json.loads((folder / "training.json").read_text())
        optimizer.load_state_dict(optimizer_from_tensors(
            load_file(str(folder / "optimizer.safetensors")), meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        if meta["scaler"]:
            scaler.load_state_dict(meta["scaler"])
        if restore_rng_state:
            restore_rng(load_file(str(folder / "rng.safetensors")), meta["rng"])

    def save_best(self, model: torch.nn.Module, epoch: int) -> Path:
        return self._write_dir(f"best-{epoch:04d}",
                               lambda tmp: save_model(model, str(tmp / "model.safetensors")))

    def best_dir(self, epoch: int) -> Path:
        return self.folder / f"best-{epoch:04d}"

    def load_best(self, model: torch.nn.Module, epoch: int) -> None:
        path = self.best_dir(epoch) / "model.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"best checkpoint of epoch {epoch} missing: {path}")
        load_model(model, str(path), device=str(_device_of(model)))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
