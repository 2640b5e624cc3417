"""MMGuardModel: CLIP towers (optionally LoRA-adapted) + a fusion head that classifies the pair."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline import taxonomy
from pipeline.model import feature_cache
from pipeline.model.heads import build_head
from pipeline.model.finetune import configure_finetuning
from pipeline.model.packaged import PACKAGED_MODELS
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
        # Packaged configs split each tower into a pretrained trunk and a new projection; the
        # trunk's output ("features") is what the embedding cache stores.
        self.packaged = PACKAGED_MODELS.get(model_params.name)
        self.caches: dict[str, feature_cache.TowerCache] = {}
        self.tower_rows = {tower: 0 for tower in feature_cache.TOWERS}  # rows a trunk computed

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Long[N, context_length]; longer texts are truncated by the tokenizer."""
        return self._tokenizer(list(texts))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if self.packaged is None:
            self.clip.set_grad_checkpointing(enabled)
            return
        # open_clip's Hugging Face adapter switches checkpointing on whatever flag it is given,
        # so the text trunk is set directly.
        text = self.clip.text.transformer
        text.gradient_checkpointing_enable() if enabled else text.gradient_checkpointing_disable()
        self.clip.visual.set_grad_checkpointing(enabled)

    def train(self, mode: bool = True) -> "MMGuardModel":
        super().train(mode)
        if mode and self.model_params.finetune == "frozen":
            # A frozen tower runs as in evaluation (no dropout, BatchNorm statistics kept), so
            # its features are the same every epoch and equal to the cached ones.
            self.clip.eval()
            if self.packaged:
                for name in self.packaged.projections:
                    self.clip.get_submodule(name).train()
        elif mode and self.model_params.finetune == "lora":
            # LoRA leaves the pretrained weights as they are; that includes BatchNorm statistics.
            for module in self.clip.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------ trunk features and the cache

    @property
    def cacheable(self) -> bool:
        """Only frozen pretrained trunks give the same features for the same input forever."""
        return self.packaged is not None and self.model_params.finetune == "frozen"

    def trunk(self, tower: str) -> nn.Module:
        return self.clip.visual.trunk if tower == "image" else self.clip.text.transformer

    def tower_fingerprints(self) -> dict[str, str]:
        return {tower: feature_cache.fingerprint(self.trunk(tower))
                for tower in feature_cache.TOWERS}

    def attach_cache(self, folder: str | Path) -> dict[str, int]:
        """Read trunk features from the embed stage's folder; returns entries per tower."""
        if not self.cacheable:
            raise ValueError(f"model {self.model_params.name!r} with finetune "
                             f"{self.model_params.finetune!r} has no cacheable trunks (a "
                             f"packaged config with finetune: frozen has)")
        self.caches = {tower: feature_cache.TowerCache.load(Path(folder), tower, fingerprint)
                       for tower, fingerprint in self.tower_fingerprints().items()}
        return {tower: len(cache) for tower, cache in self.caches.items()}

    def attach_cache_if_built(self, folder: str | Path) -> dict[str, int] | None:
        """attach_cache when the embed stage built a cache there and these trunks can use it."""
        if not self.cacheable or not feature_cache.read_manifest(Path(folder))["enabled"]:
            return None
        return self.attach_cache(folder)

    def cache_report(self) -> dict:
        """Cache hits and misses, and the rows each trunk actually computed (stage stats)."""
        return {"cached": bool(self.caches),
                "hits": {t: c.hits for t, c in self.caches.items()},
                "misses": {t: c.misses for t, c in self.caches.items()},
                "trunk_rows_computed": dict(self.tower_rows)}

    def _run_trunk(self, tower: str, inputs: torch.Tensor) -> torch.Tensor:
        self.tower_rows[tower] += len(inputs)
        if tower == "image":
            return self.clip.visual.trunk(inputs)
        text = self.clip.text
        mask = (inputs != text.config.pad_token_id).long()
        # Columns that are padding in every row change nothing (attention and pooling mask them)
        # but cost as much as real tokens: short captions padded to the context length run
        # several times faster without them.
        used = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
        inputs, mask = inputs[:, :used], mask[:, :used]
        return text.pooler(text.transformer(input_ids=inputs, attention_mask=mask), mask)

    def features(self, tower: str, inputs: torch.Tensor) -> torch.Tensor:
        """Trunk output for a batch: from the cache where it has the row, else computed."""
        cache = self.caches.get(tower)
        if cache is None:
            return self._run_trunk(tower, inputs)
        keys = feature_cache.item_keys(inputs)
        rows = cache.get(keys)
        # Rows missing from the cache, once per distinct input (a confounder pair shares its
        # image, so one batch can hold the same pixels twice).
        first: dict[bytes, int] = {}
        for i, row in enumerate(rows):
            if row is None:
                first.setdefault(keys[i], i)
        if first:
            computed = self._run_trunk(tower, inputs[list(first.values())])
            cache.put(list(first), computed.detach().float().cpu().numpy())
            rows = cache.get_quietly(keys)
        return torch.from_numpy(np.stack(rows)).to(inputs.device)

    def _embed(self, images: torch.Tensor, tokens: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.packaged is None:
            return (self.clip.encode_image(images, normalize=True),
                    self.clip.encode_text(tokens, normalize=True))
        image = self.clip.visual.head(self.features("image", images))
        text = self.clip.text.proj(self.features("text", tokens))
        return nn.functional.normalize(image, dim=-1), nn.functional.normalize(text, dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> ModelOutput:
        # Both embeddings are always computed: the contrastive loss needs them even when a
        # unimodal baseline head reads only one.
        image_emb, text_emb = self._embed(images, tokens)
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
        packaged = PACKAGED_MODELS.get(model_params.name)
        configure_finetuning(towers.clip, model_params.finetune, model_params.lora,
                             always_train=packaged.projections if packaged else ())
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
