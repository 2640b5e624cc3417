"""Save and load a trained MMGuardModel: model.safetensors (the full state dict, LoRA included)
and config.json. Loading rebuilds the architecture with no pretrained download and fills every
weight from the file; nothing is unpickled."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline import atomic, taxonomy
from pipeline.model.classifier import MMGuardModel, build_from_model_params
from pipeline.params import ModelParams

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def save_model(model: MMGuardModel, out_dir: str | Path) -> Path:
    """Write weights and config into a fresh folder that then replaces `out_dir` whole, so
    `out_dir` is a complete model or absent: a crash never leaves new weights beside an old
    config (which `register` would accept)."""
    out_dir = Path(out_dir)
    # clone: safetensors refuses tensors that share storage.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = {
        "format_version": FORMAT_VERSION,
        "task": model.task,
        "class_names": list(model.class_names),
        "open_clip_name": model.model_params.name,
        "model": model.model_params.model_dump(mode="json"),
    }
    if model.packaged is not None:
        # Where the pretrained trunks came from: package, file, sha256 and licence.
        config["pretrained_weights"] = model.packaged.record()
    with atomic.directory(out_dir) as staging:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {model_dir} (was save_model run?)")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}")
    return config


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> MMGuardModel:
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {model_dir}")
    task = config["task"]
    if list(taxonomy.class_names(task)) != config["class_names"]:
        raise ValueError(f"{model_dir}: saved class names {config['class_names']} differ from "
                         f"the taxonomy's {list(taxonomy.class_names(task))} for {task!r}")
    # Every weight comes from the file, so the towers start empty rather than downloaded.
    model_params = ModelParams.model_validate({**config["model"], "pretrained": None})
    model = build_from_model_params(model_params, task, seed=0)
    model.model_params = ModelParams.model_validate(config["model"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.to(device)
