"""LoRA adapters (peft) on the attention of both CLIP towers, and the three fine-tune modes.

open_clip's attention is `nn.MultiheadAttention`, whose forward never calls `out_proj.forward`
and reads `in_proj_weight` directly, so peft wraps the whole MHA module (in_proj and out_proj).
peft 0.21's own MHA layer runs each forward by merging the adapter into the base weights and
subtracting it again afterwards; that applies the out_proj delta twice (W + 2·ΔW, see
huggingface/peft PR #3774) and lets floating-point rounding creep into the frozen weights on every
step. `ExactLoraMultiheadAttention` keeps peft's layer (same parameters, same state-dict keys) but
runs the base MHA with `W + ΔW` swapped in through `torch.func.functional_call`, so the frozen
weights are never written to.

LoRA dropout does not apply here: the delta acts on weights, not on the layer's input (peft's
MHA layer behaves the same way).
"""
from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import MultiheadAttention as PeftLoraMultiheadAttention
from torch import nn

from pipeline.params import LoraParams

FINETUNE_MODES = ("lora", "full", "frozen")


class ExactLoraMultiheadAttention(PeftLoraMultiheadAttention):
    """peft's MHA LoRA layer with a forward that adds each delta once and never mutates weights."""

    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any):
        self._check_forward_args(query, *args, **kwargs)
        mha = self.get_base_layer()
        out_proj = mha.out_proj  # peft's Linear wrapper around the original out_proj
        active = [name for name in self.active_adapters if name in self.lora_A]
        if self.disable_adapters or self.merged or not active:
            return mha(query, *args, **kwargs)
        in_weight = mha.in_proj_weight
        out_weight = out_proj.get_base_layer().weight
        for name in active:
            in_weight = in_weight + self.get_delta_weight(name).to(in_weight.dtype)
            out_weight = out_weight + out_proj.get_delta_weight(name).to(out_weight.dtype)
        swapped = {"in_proj_weight": in_weight, "out_proj.base_layer.weight": out_weight}
        return torch.func.functional_call(mha, swapped, (query, *args), kwargs)


def attention_module_names(clip: nn.Module) -> list[str]:
    return [name for name, module in clip.named_modules()
            if isinstance(module, nn.MultiheadAttention)]


def apply_lora(clip: nn.Module, lora: LoraParams) -> list[str]:
    """Wrap every attention module of both towers with LoRA in place; returns the wrapped names.

    Afterwards only the LoRA A/B matrices require grad.
    """
    targets = attention_module_names(clip)
    if not targets:
        raise ValueError(
            f"{type(clip).__name__} has no nn.MultiheadAttention to adapt; LoRA fine-tuning "
            "needs an open_clip model with native transformer towers (use finetune: full or "
            "frozen for timm/HF towers)")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, bias="none")
    config._register_custom_module({nn.MultiheadAttention: ExactLoraMultiheadAttention})
    inject_adapter_in_model(config, clip)
    for name, parameter in clip.named_parameters():
        parameter.requires_grad_(is_lora_parameter(name))
    return targets


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def configure_finetuning(clip: nn.Module, finetune: str, lora: LoraParams) -> None:
    """lora: adapters train, towers frozen; full: all tower weights train; frozen: none do."""
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"model.finetune {finetune!r}; allowed: {', '.join(FINETUNE_MODES)}")
    if finetune == "lora":
        apply_lora(clip, lora)
        return
    for parameter in clip.parameters():
        parameter.requires_grad_(finetune == "full")
