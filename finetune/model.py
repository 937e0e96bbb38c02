"""The image tower plus a cosine classifier on its L2-normalised embedding.

Normalised softmax with an additive margin (CosFace): logits are ``scale * (cos - margin)``
for the true class and ``scale * cos`` otherwise. Training the classes through the *normalised*
embedding shapes exactly the space that retrieval ranks by cosine similarity.

Retrieval may instead rank by the trunk's pooled features, before the projection the class loss
trains (``embedding="trunk"``): the projection absorbs most of the collapse onto the training
classes, and what it leaves in the trunk tells categories never trained on apart better
(issue 18's leave-categories-out protocol, README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from lookalike.errors import ModelLoadError


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


EMBEDDINGS = ("projection", "trunk")


def linear_projection(visual: nn.Module) -> nn.Linear | None:
    """The linear projection (no bias) ending an open_clip timm tower (``visual.head.proj``), if any."""
    projection = getattr(getattr(visual, "head", None), "proj", None)
    if isinstance(projection, nn.Linear) and projection.bias is None and hasattr(visual, "trunk"):
        return projection
    return None


class RetrievalModel(nn.Module):
    """``visual`` (an open_clip image tower) -> normalised embedding -> cosine head; retrieval ranks
    by that embedding, or by the trunk's features before the projection (``embedding="trunk"``)."""

    def __init__(
        self,
        visual: nn.Module,
        dim: int,
        n_classes: int,
        scale: float = 16.0,
        margin: float = 0.1,
        embedding: str = "projection",
    ):
        super().__init__()
        if embedding == "trunk" and linear_projection(visual) is None:
            raise ModelLoadError(
                "--embedding trunk needs a timm tower ending in a linear projection (the small and large presets)"
            )
        self.visual = visual
        self.head = CosineHead(dim, n_classes, scale, margin)
        self.embedding = embedding
        #: The whitening fitted once training is over (`finetune.whitening`): ranking multiplies the
        #: trunk's features by ``whitening`` (features, dim), and the head classifies what
        #: ``unwhitening`` (dim, features) maps back, as the saved checkpoint's head will. None: the
        #: features as they are.
        self.whitening: torch.Tensor | None = None
        self.unwhitening: torch.Tensor | None = None

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The normalised embedding the head classifies."""
        return F.normalize(self.visual(pixels).float(), dim=-1)

    def embed_both(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the embedding retrieval ranks by, the one the head classifies), both normalised."""
        if self.embedding == "projection":
            embedded = self.embed(pixels)
            return embedded, embedded
        pooled = self.visual.trunk(pixels).float()
        if self.whitening is None:
            return F.normalize(pooled, dim=-1), F.normalize(self.visual.head(pooled).float(), dim=-1)
        ranked = pooled @ self.whitening
        return F.normalize(ranked, dim=-1), F.normalize(self.visual.head(ranked @ self.unwhitening).float(), dim=-1)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(pixels), labels)


def add_stochastic_depth(tower: nn.Module, rate: float) -> int:
    """Drop the residual branch of each of a timm tower's blocks with a probability rising
    linearly from 0 at the first block to ``rate`` at the last (timm's rule), in training only.

    Regularisation for a deep tower trained from scratch on few photos (the large preset overfits
    in its last third). It adds no weights, so the saved tower is the architecture as configured,
    and an evaluated (``eval()``) tower is unchanged. Returns the number of blocks.
    """
    blocks = [module for module in tower.modules() if isinstance(getattr(module, "drop_path", False), nn.Module | None)]
    if not blocks:
        raise ModelLoadError(
            "--drop-path drops the residual blocks of a timm image tower (the presets' ResNets); "
            f"this model's tower ({type(tower).__name__}) has none"
        )
    for index, block in enumerate(blocks):
        block.drop_path = DropPath(rate * index / max(1, len(blocks) - 1))
    return len(blocks)
