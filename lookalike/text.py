"""CLIP's text tower: words into the space of the image embeddings, for `text=` searches.

Kept only where that space is shared: a pretrained (or random-init, for the wiring) open_clip
model. A checkpoint of `python -m finetune` moved its image tower away from the text tower, so it
has none; so has the ONNX runtime, which exports the image tower only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from lookalike.model_source import ModelSource


class TextTower:
    """``embed(texts)``: L2-normalised float32 (N, dim), comparable with the image embeddings."""

    def __init__(self, clip: torch.nn.Module, tokenizer: Any, device: torch.device) -> None:
        self.clip, self.tokenizer, self.device = clip, tokenizer, device

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1).cpu().numpy()


def text_tower(
    clip: torch.nn.Module, source: ModelSource, enabled: bool, device: torch.device
) -> tuple[TextTower | None, str]:
    """The model's text tower, or None and why there is none (the 400 a `text=` search gets)."""
    if not enabled:
        return None, "text search is off on this service (TEXT_SEARCH=false)"
    if source.kind == "checkpoint":
        return None, (
            "MODEL_CHECKPOINT is an encoder fine-tuned on a catalogue: its image embeddings no longer share a "
            "space with CLIP's text tower. Text search needs a pretrained CLIP (MODEL_NAME + MODEL_PRETRAINED)"
        )
    if not hasattr(clip, "encode_text"):
        return None, f"{source.label} has no text tower"
    tokenizer = open_clip.get_tokenizer(source.open_clip_arguments[0])
    return TextTower(clip.to(device), tokenizer, device), ""
