"""The image tower plus a cosine classifier on its L2-normalised embedding.

Normalised softmax with an additive margin (CosFace): logits are ``scale * (cos - margin)``
for the true class and ``scale * cos`` otherwise. Training the classes through the *normalised*
embedding shapes exactly the space that retrieval ranks by cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineHead(nn.Module):
    def __init__(self, dim: int, n_classes: int, scale: float = 16.0, margin: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.scale = scale
        self.margin = margin

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ F.normalize(self.weight, dim=-1).T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        if labels is not None and self.margin:
            cosine = cosine - self.margin * F.one_hot(labels, cosine.shape[1])
        return self.scale * cosine


class RetrievalModel(nn.Module):
    """``visual`` (an open_clip image tower) -> normalised embedding -> cosine head."""

    def __init__(self, visual: nn.Module, dim: int, n_classes: int, scale: float = 16.0, margin: float = 0.1):
        super().__init__()
        self.visual = visual
        self.head = CosineHead(dim, n_classes, scale, margin)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels).float(), dim=-1)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(pixels), labels)
