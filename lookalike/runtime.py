"""The encoder as ingest and the service use it, whichever runtime runs it (ENCODER_RUNTIME).

``torch`` (`lookalike.encoder.ImageEncoder`) runs on any device and is what fine-tuning uses;
``onnx`` (`lookalike.onnx_encoder.OnnxEncoder`) runs an export on the CPU with ONNX Runtime, so the
API process never imports torch (1.4 s and ~470 MiB at start, plus open_clip's 2 s). Both are
imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from lookalike.classifier import CategoryClassifier
from lookalike.settings import Settings


class EncoderPlacement(Protocol):
    device: Any  # has ``type`` ("cpu", "cuda") and a ``str``
    precision: str

    def describe(self) -> str: ...


class Encoder(Protocol):
    """What every encoder offers: L2-normalised float32 (N, dim) vectors and who made them."""

    identity: str  # model label @ weights fingerprint: the store refuses to mix two
    dim: int
    classifier: CategoryClassifier | None
    random_weights: bool
    placement: EncoderPlacement
    #: Whether `embed_texts` works (a text tower sharing the image embeddings' space).
    searches_text: bool
    #: The per-image half of preprocessing, run in ingest's decode workers; `embed_batch` takes a stack of them.
    worker_preprocess: Callable[[Image.Image], Any]

    def embed_batch(self, pixels: Any) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Words into the same space; `InvalidRequest` (400) where the encoder has no text tower."""
        ...


def load_encoder(settings: Settings) -> Encoder:
    """The encoder ENCODER_RUNTIME names, built from the MODEL_* settings."""
    if settings.encoder_runtime == "onnx":
        from lookalike.onnx_encoder import OnnxEncoder

        return OnnxEncoder.from_settings(settings)
    from lookalike.encoder import ImageEncoder

    return ImageEncoder.from_settings(settings)
