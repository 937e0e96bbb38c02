"""What a photo looks like to the store: the encoder's embedding and its colour descriptor.

A category-tuned encoder learns *what kind* of thing a photo shows and may throw colour away;
the colour histogram keeps it. The store holds both as named vectors and fuses them per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.colour import colour_histogram

if TYPE_CHECKING:  # the store imports this module and must not pull in torch
    from lookalike.runtime import Encoder


@dataclass(frozen=True)
class Look:
    """One photo: ``embedding`` (shape, texture; the encoder's) and ``colour`` (both unit length)."""

    embedding: np.ndarray
    colour: np.ndarray


def looks_of(encoder: Encoder, images: Sequence[Image.Image]) -> list[Look]:
    """Embed the images in one forward pass and describe their colours."""
    embeddings = encoder.embed_images(images)
    return [Look(embedding, colour_histogram(image)) for embedding, image in zip(embeddings, images, strict=True)]
