"""Classification heads over the two L2-normalised CLIP embeddings.

`modalities` lists which embeddings the head sees, in order ("image", "text"); a unimodal baseline
passes one, and the other embedding never enters the head (no zero-filled token).
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.params import HeadParams

FUSIONS = ("transformer", "concat_mlp")
MODALITIES = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}


class TransformerFusionHead(nn.Module):
    """Each embedding is projected to one token, tagged with a learned modality-type embedding;
    a CLS token attends over them and its final state is classified.

    With both modalities a third token carries image ⊙ text (elementwise product of the
    normalised embeddings; its sum is the CLIP similarity). Whether a caption describes its image
    is a comparison of the two embeddings, which two separately projected tokens learn slowly.
    """

    def __init__(self, embed_dim: int, num_classes: int, head: HeadParams,
                 modalities: tuple[str, ...]):
        super().__init__()
        self.modalities = modalities
        self.token_names = modalities + (("joint",) if len(modalities) == 2 else ())
        self.project = nn.ModuleDict({m: nn.Linear(embed_dim, head.width)
                                      for m in self.token_names})
        self.modality_type = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(head.width) * 0.02) for m in self.token_names})
        self.cls_token = nn.Parameter(torch.randn(head.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=head.width, nhead=head.heads, dim_feedforward=4 * head.width,
            dropout=head.dropout, activation="gelu", batch_first=True, norm_first=True)
        # Nested tensors only pay off with padding masks, and warn with norm_first.
        self.encoder = nn.TransformerEncoder(layer, num_layers=head.layers,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(head.width)
        self.classifier = nn.Linear(head.width, num_classes)

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = embeddings[self.modalities[0]].shape[0]
        inputs = {m: embeddings[m] for m in self.modalities}
        if "joint" in self.token_names:
            inputs["joint"] = embeddings["image"] * embeddings["text"]
        tokens = [self.cls_token.expand(batch, -1)]
        tokens += [self.project[m](inputs[m]) + self.modality_type[m] for m in self.token_names]
        encoded = self.encoder(torch.stack(tokens, dim=1))
        return self.classifier(self.norm(encoded[:, 0]))


class ConcatMLPHead(nn.Module):
    """The late-fusion baseline: concatenated embeddings -> one hidden layer -> logits."""

    def __init__(self, embed_dim: int, num_classes: int, head: HeadParams,
                 modalities: tuple[str, ...]):
        super().__init__()
        self.modalities = modalities
        width_in = embed_dim * len(modalities)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width_in),
            nn.Linear(width_in, head.width),
            nn.GELU(),
            nn.Dropout(head.dropout),
            nn.Linear(head.width, num_classes),
        )

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([embeddings[m] for m in self.modalities], dim=-1))


def build_head(fusion: str, modality: str, embed_dim: int, num_classes: int,
               head: HeadParams) -> nn.Module:
    if fusion not in FUSIONS:
        raise ValueError(f"model.fusion {fusion!r}; allowed: {', '.join(FUSIONS)}")
    if modality not in MODALITIES:
        raise ValueError(f"model.modality {modality!r}; allowed: {', '.join(MODALITIES)}")
    head_class = TransformerFusionHead if fusion == "transformer" else ConcatMLPHead
    return head_class(embed_dim, num_classes, head, MODALITIES[modality])
