"""A colour descriptor: the HSV 8x8x8 joint histogram, Hellinger-normalised.

The square root of an L1-normalised histogram has unit L2 norm, and the dot product of two such
vectors is the Bhattacharyya coefficient: cosine similarity of these vectors compares colour
distributions properly. Used as the evaluation baseline and as a colour signal for search.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BINS = 8
DIM = BINS**3
THUMBNAIL = 64


def colour_histogram(image: Image.Image) -> np.ndarray:
    """(512,) float32, unit length."""
    small = image.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    hsv = np.asarray(small.convert("HSV"), dtype=np.int32) * BINS // 256
    index = (hsv[..., 0] * BINS + hsv[..., 1]) * BINS + hsv[..., 2]
    counts = np.bincount(index.ravel(), minlength=DIM).astype(np.float32)
    return np.sqrt(counts / counts.sum())
