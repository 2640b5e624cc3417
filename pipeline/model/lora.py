"""LoRA adapters (peft) on the attention / projection layers of the towers (finetune: lora).

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


# LoRA targets inside pretrained towers built from other libraries: a BERT text tower's
# attention projections (transformers names them query/key/value and attention.output.dense) and
# an EfficientNet image tower's pointwise projection convolutions (timm's conv_pwl), the layers
# that carry most of each block's weights.
HF_ATTENTION_SUFFIXES = (".attention.self.query", ".attention.self.key",
                         ".attention.self.value", ".attention.output.dense")
TIMM_PROJECTION_SUFFIX = ".conv_pwl"


def attention_module_names(clip: nn.Module) -> list[str]:
    return [name for name, module in clip.named_modules()
            if isinstance(module, nn.MultiheadAttention)]


def lora_targets(clip: nn.Module) -> list[str]:
    """Native open_clip attention, HF attention projections, timm pointwise projections."""
    targets = attention_module_names(clip)
    for name, module in clip.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(HF_ATTENTION_SUFFIXES):
            targets.append(name)
        elif isinstance(module, nn.Conv2d) and name.endswith(TIMM_PROJECTION_SUFFIX):
            targets.append(name)
    return targets


def apply_lora(clip: nn.Module, lora: LoraParams) -> list[str]:
    """Wrap the towers' attention / projection layers with LoRA in place; returns their names.

    Afterwards only the LoRA A/B matrices require grad.
    """
    targets = lora_targets(clip)
    if not targets:
        raise ValueError(
            f"{type(clip).__name__} has no attention or projection layer LoRA knows how to "
            "adapt (nn.MultiheadAttention, a BERT attention Linear, a timm conv_pwl); use "
            "finetune: full or frozen")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, bias="none")
    config._register_custom_module({nn.MultiheadAttention: ExactLoraMultiheadAttention})
    inject_adapter_in_model(config, clip)
    for name, parameter in clip.named_parameters():
        parameter.requires_grad_(is_lora_parameter(name))
    return targets


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name
