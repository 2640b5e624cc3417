"""Training losses: cross-entropy on the labels plus a CLIP contrastive loss on valid pairs.

Only valid pairs (True/Neutral items, whose text describes their image) may act as positives for
the contrastive term; the others are masked out of both the rows and the columns of the
similarity matrix, so they are neither positives nor negatives.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pipeline.model.classifier import ModelOutput


def _connected_zero(*tensors: torch.Tensor) -> torch.Tensor:
    # A zero that stays in the autograd graph: under DDP every parameter must receive a gradient
    # each step, also when a batch holds no valid pair.
    return sum((t * 0).sum() for t in tensors)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                     logit_scale: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the valid pairs only; 0 when fewer than two are valid.

    image_emb, text_emb: [B, D], L2-normalised; logit_scale: the (exponentiated) temperature;
    valid_mask: Bool[B].
    """
    valid_mask = valid_mask.to(device=image_emb.device, dtype=torch.bool)
    if valid_mask.shape != image_emb.shape[:1]:
        raise ValueError(f"valid_mask has shape {tuple(valid_mask.shape)}, expected "
                         f"({image_emb.shape[0]},)")
    if int(valid_mask.sum()) < 2:  # one pair has no negatives to contrast with
        return _connected_zero(image_emb, text_emb, logit_scale)
    image = image_emb[valid_mask]
    text = text_emb[valid_mask]
    logits = logit_scale * image @ text.T
    targets = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def total_loss(output: "ModelOutput", labels: torch.Tensor, valid_mask: torch.Tensor,
               ce_weight: float = 1.0, contrastive_weight: float = 1.0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ce_weight * CE(logits, labels) + contrastive_weight * contrastive(valid pairs).

    Returns the loss and its detached parts {"ce", "contrastive"} (0-dim tensors; float() them).
    """
    ce = F.cross_entropy(output.logits.float(), labels.to(output.logits.device))
    contrastive = contrastive_loss(output.image_emb.float(), output.text_emb.float(),
                                   output.logit_scale.float(), valid_mask)
    loss = ce_weight * ce + contrastive_weight * contrastive
    return loss, {"ce": ce.detach(), "contrastive": contrastive.detach()}
