"""The multimodal classifier: open_clip towers + peft LoRA + fusion head, losses, save/load."""
from pipeline.model.classifier import (
    MMGuardModel,
    ModelOutput,
    build_from_model_params,
    build_model,
    count_parameters,
)
from pipeline.model.io import load_model, read_config, save_model
from pipeline.model.losses import contrastive_loss, total_loss
from pipeline.model.towers import available_models, check_tower_source, save_tower_weights

__all__ = [
    "MMGuardModel", "ModelOutput", "build_model", "build_from_model_params", "count_parameters",
    "save_model", "load_model", "read_config", "contrastive_loss", "total_loss",
    "available_models", "check_tower_source", "save_tower_weights",
]
