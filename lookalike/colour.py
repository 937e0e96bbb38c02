"""A colour descriptor: the HSV 8x8x8 joint histogram, Hellinger-normalised.

The square root of an L1-normalised histogram has unit L2 norm, and the dot product of two such
vectors is the Bhattacharyya coefficient: cosine similarity of these vectors compares colour
distributions properly. Used as the evaluation baseline and as a colour signal for search.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageColor

BINS = 8
DIM = BINS**3
THUMBNAIL = 64


@functools.lru_cache(maxsize=256)  # per query otherwise; read-only so no caller can change the cached one
def colour_of(name: str) -> np.ndarray:
    """The colour vector of a colour given as ``#rrggbb`` or a CSS name, built as an item's is
    (the histogram of a photo of that colour alone). ValueError for an unknown colour."""
    vector = colour_histogram(Image.new("RGB", (THUMBNAIL, THUMBNAIL), ImageColor.getrgb(name)))
    vector.setflags(write=False)
    return vector


def recoloured(colour: np.ndarray, name: str) -> np.ndarray:
    """ "This photo, but in <name>": the colour vector with its chromatic part (saturation and value
    bins >= 2) moved to the target's hue, keeping saturation and value; whites, greys and blacks
    (a product photo's background) stay. A neutral target takes the chromatic part in its own bin."""
    target = int(colour_of(name).argmax())
    _, saturation, value = np.indices((BINS, BINS, BINS)).reshape(3, -1)
    chromatic = (saturation >= 2) & (value >= 2)
    mass = colour.astype(np.float64) ** 2  # Hellinger -> proportions
    if chromatic[target]:
        destination = (target // BINS**2 * BINS + saturation[chromatic]) * BINS + value[chromatic]
    else:
        destination = np.full(int(chromatic.sum()), target)
    moved = np.where(chromatic, 0.0, mass)
    np.add.at(moved, destination, mass[chromatic])
    return np.sqrt(moved / moved.sum()).astype(np.float32)


def colour_histogram(image: Image.Image) -> np.ndarray:
    """(512,) float32, unit length."""
    small = image.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    hsv = np.asarray(small.convert("HSV"), dtype=np.int32) * BINS // 256
    index = (hsv[..., 0] * BINS + hsv[..., 1]) * BINS + hsv[..., 2]
    counts = np.bincount(index.ravel(), minlength=DIM).astype(np.float32)
    return np.sqrt(counts / counts.sum())
