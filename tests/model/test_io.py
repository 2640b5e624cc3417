"""save_model / load_model: safetensors + JSON, strict, no download, identical predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipeline.model import build_model, load_model, save_model, total_loss
from pipeline.params import parse_params


def make_params(task: str = "hateful_memes", **model):
    return parse_params({"task": task, "model": model})


def nudge(model) -> None:
    """One optimizer step so LoRA B and the head hold trained, non-initial values."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens = model.tokenize(["a", "b", "c", "d"])
    labels = torch.tensor([0, 1, 0, 0]) % len(model.class_names)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = total_loss(model(images, tokens), labels, labels == 0)
    loss.backward()
    optimizer.step()


def pairs(count: int = 5):
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (48, 60, 3), dtype=np.uint8))
              for _ in range(count)]
    return images, [f"sample caption {i}" for i in range(count)]


@pytest.mark.parametrize("task, model_params", [
    ("hateful_memes", {}),
    ("moderation7", {"fusion": "concat_mlp", "modality": "text", "finetune": "full"}),
])
def test_round_trip_gives_identical_predictions(tmp_path, task, model_params):
    model = build_model(make_params(task, **model_params))
    nudge(model)
    images, texts = pairs()
    expected = model.predict_proba(images, texts)
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(images, texts), expected)
    assert loaded.task == task and loaded.class_names == model.class_names
    assert loaded.model_params == model.model_params


def test_saved_files_hold_the_full_state_and_config(tmp_path):
    model = build_model(make_params())
    nudge(model)
    save_model(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert state.keys() == model.state_dict().keys()
    assert any(".lora_B." in key for key in state)
    lora_b = next(key for key in state if ".lora_B." in key)
    assert state[lora_b].abs().sum() > 0  # the trained adapter, not a fresh one
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["task"] == "hateful_memes"
    assert config["class_names"] == ["not_hateful", "hateful"]
    assert config["open_clip_name"] == "tiny"
    assert config["model"]["finetune"] == "lora" and config["model"]["lora"]["rank"] == model.model_params.lora.rank


def test_load_needs_no_pretrained_weights(tmp_path):
    # The recorded pretrained source (a tag that would download) is not touched on load.
    model = build_model(make_params())
    save_model(model, tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["pretrained"] = str(tmp_path / "gone.safetensors")
    config_path.write_text(json.dumps(config))
    loaded = load_model(tmp_path)
    assert loaded.model_params.pretrained == str(tmp_path / "gone.safetensors")
    head_key = "head.classifier.weight"
    assert torch.equal(loaded.state_dict()[head_key], model.state_dict()[head_key])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")
    save_model(build_model(make_params()), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_incomplete_weights_are_refused(tmp_path):
    save_model(build_model(make_params()), tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    state.pop("head.classifier.weight")
    save_file(state, str(weights))
    with pytest.raises(RuntimeError, match="head.classifier.weight"):
        load_model(tmp_path)


def test_class_names_that_no_longer_match_the_taxonomy_are_refused(tmp_path):
    save_model(build_model(make_params()), tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["class_names"] = ["benign", "hateful"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="class names"):
        load_model(tmp_path)
