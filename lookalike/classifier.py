"""A fine-tuned checkpoint's category head, for ``category=auto``: numpy only, so the service
needs no torch to use it (ENCODER_RUNTIME=onnx)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.checkpoint import read_head


@dataclass(frozen=True)
class CategoryClassifier:
    """A cosine head: the category of an embedding, with its probability."""

    classes: list[str]
    weight: np.ndarray  # (classes, dim), rows L2-normalised
    scale: float
    #: (dim, embedding dim) for a tower that ranks by its trunk: the head classifies the projection.
    projection: np.ndarray | None = None

    @classmethod
    def load(cls, checkpoint: Path) -> CategoryClassifier | None:
        """The head of a checkpoint trained on categories (one trained on products has no category head)."""
        head = read_head(checkpoint)
        if head is None:
            return None
        norms = np.maximum(np.linalg.norm(head.weight, axis=1, keepdims=True), 1e-12)  # as F.normalize
        return cls(head.classes, (head.weight / norms).astype(np.float32), head.scale, head.projection)

    def predict(self, embedding: np.ndarray) -> tuple[str, float]:
        if self.projection is not None:
            projected = self.projection @ embedding
            embedding = projected / max(float(np.linalg.norm(projected)), 1e-12)
        logits = self.scale * (self.weight @ embedding)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        return self.classes[best], float(probabilities[best])
