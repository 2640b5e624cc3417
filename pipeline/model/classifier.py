"""MMGuardModel: CLIP towers (optionally LoRA-adapted) + a fusion head that classifies the pair."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline import taxonomy
from pipeline.model.heads import build_head
from pipeline.model.lora import configure_finetuning
from pipeline.model.towers import check_tower_source, create_towers
from pipeline.params import ModelParams, Params

# open_clip clamps the learned temperature the same way when training CLIP.
MAX_LOGIT_SCALE = 100.0


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, C]
    image_emb: torch.Tensor  # [B, D], L2-normalised
    text_emb: torch.Tensor  # [B, D], L2-normalised
    logit_scale: torch.Tensor  # 0-dim, exp of the learned log-temperature


class MMGuardModel(nn.Module):
    def __init__(self, clip: nn.Module, head: nn.Module, preprocess: Callable,
                 tokenizer: Callable, task: str, model_params: ModelParams):
        super().__init__()
        self.clip = clip
        self.head = head
        self.preprocess = preprocess  # PIL.Image -> Float[3, H, W] (eval transform)
        self._tokenizer = tokenizer
        self.task = task
        self.class_names = list(taxonomy.class_names(task))
        self.model_params = model_params

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Long[N, context_length]; longer texts are truncated by the tokenizer."""
        return self._tokenizer(list(texts))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.clip.set_grad_checkpointing(enabled)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> ModelOutput:
        # Both embeddings are always computed: the contrastive loss needs them even when a
        # unimodal baseline head reads only one.
        image_emb = self.clip.encode_image(images, normalize=True)
        text_emb = self.clip.encode_text(tokens, normalize=True)
        logits = self.head({"image": image_emb, "text": text_emb})
        logit_scale = self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return ModelOutput(logits=logits, image_emb=image_emb, text_emb=text_emb,
                           logit_scale=logit_scale)

    @torch.no_grad()
    def predict_proba(self, images: Sequence[Image.Image], texts: Sequence[str],
                      batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] (float32) for image/text pairs, in eval mode."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # A model already in eval mode is left alone: serving sets eval once at load, and
        # flipping the mode here would race with other threads predicting on the same model.
        was_training = self.training
        if was_training:
            self.eval()
        device = self.device
        chunks = []
        try:
            for start in range(0, len(images), batch_size):
                batch_images = torch.stack(
                    [self.preprocess(image) for image in images[start:start + batch_size]])
                tokens = self.tokenize(texts[start:start + batch_size])
                output = self(batch_images.to(device), tokens.to(device))
                chunks.append(output.logits.float().softmax(dim=-1).cpu().numpy())
        finally:
            if was_training:
                self.train()
        if not chunks:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)


def build_from_model_params(model_params: ModelParams, task: str, seed: int) -> MMGuardModel:
    """Build towers, adapters and head; random parts are drawn from `seed` only."""
    check_tower_source(model_params.name, model_params.pretrained)
    num_classes = taxonomy.num_classes(task)
    # A private RNG stream: the same seed gives the same model whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        towers = create_towers(model_params.name, model_params.pretrained)
        configure_finetuning(towers.clip, model_params.finetune, model_params.lora)
        head = build_head(model_params.fusion, model_params.modality, towers.embed_dim,
                          num_classes, model_params.head)
    return MMGuardModel(towers.clip, head, towers.preprocess, towers.tokenizer, task,
                        model_params)


def build_model(params: Params) -> MMGuardModel:
    return build_from_model_params(params.model, params.task, params.train.seed)


def count_parameters(model: nn.Module) -> dict[str, int]:
    parameters = list(model.parameters())
    return {"total": sum(p.numel() for p in parameters),
            "trainable": sum(p.numel() for p in parameters if p.requires_grad)}
