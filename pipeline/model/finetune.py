"""The three fine-tune modes of the towers: which of their parameters train.

peft (pipeline/model/lora.py) is imported only for `lora`: its import alone takes seconds on a
small CPU, and every stage that builds a model (embed, train, evaluate, drift, the gate) would
pay it for the frozen default.
"""
from __future__ import annotations

from torch import nn

from pipeline.params import LoraParams

FINETUNE_MODES = ("lora", "full", "frozen")


def configure_finetuning(clip: nn.Module, finetune: str, lora: LoraParams,
                         always_train: tuple[str, ...] = ()) -> None:
    """lora: adapters train, towers frozen; full: all tower weights train; frozen: none do.

    `always_train` names modules that train in every mode: the projections a packaged config
    adds on top of its pretrained trunks start random, and frozen random weights would only
    scramble the trunks' features.
    """
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"model.finetune {finetune!r}; allowed: {', '.join(FINETUNE_MODES)}")
    if finetune == "lora":
        from pipeline.model.lora import apply_lora

        apply_lora(clip, lora)
    else:
        for parameter in clip.parameters():
            parameter.requires_grad_(finetune == "full")
    for name in always_train:
        for parameter in clip.get_submodule(name).parameters():
            parameter.requires_grad_(True)
