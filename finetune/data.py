"""Training and evaluation data: the fixed query/gallery split and an in-memory image cache.

Split protocol (fixed, so numbers stay comparable between runs and models): per category, sort
the image paths, shuffle them with ``numpy.random.default_rng(0)``, the first ceil(20 %) are
queries, the rest the gallery. Only the gallery trains; the queries are held out, read only to
measure the model training chose. Training chooses its epoch on a validation split of the gallery
made the same way but rounded down (`TrainingConfig.validation_share`), which does not train.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lookalike.catalogue import CatalogueItem
from lookalike.errors import CatalogueError, InvalidImage
from lookalike.images import decode_image, read_bytes
from lookalike.pixels import Normalisation, Preprocess, split_normalisation

QUERY_FRACTION = 0.2
SPLIT_SEED = 0
#: What a class is when training and evaluating: the item's category, or its product (photos of one
#: product share a `product_id`; an item without one is a product of its own).
LABELS = ("category", "product")


def label_of(item: CatalogueItem, label: str = "category") -> str:
    return item.category if label == "category" else item.product_id or item.id


@dataclass(frozen=True)
class Split:
    queries: list[CatalogueItem]
    gallery: list[CatalogueItem]


def split_catalogue(
    items: Sequence[CatalogueItem],
    query_fraction: float = QUERY_FRACTION,
    label: str = "category",
    round_up: bool = True,
) -> Split:
    """The fixed per-label split described in the module docstring (a label with one item puts it
    in the gallery: as a query it would have nothing to find). ``round_up=False`` rounds each
    label's share of queries down: a validation split then leaves labels with few photos (a
    product's 2-5) whole for training instead of taking one of their two."""
    by_label: dict[str, list[CatalogueItem]] = {}
    for item in items:
        by_label.setdefault(label_of(item, label), []).append(item)
    queries: list[CatalogueItem] = []
    gallery: list[CatalogueItem] = []
    rounded = math.ceil if round_up else math.floor
    for name in sorted(by_label):
        members = sorted(by_label[name], key=lambda item: item.image)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(members))
        n_queries = rounded(query_fraction * len(members)) if len(members) > 1 else 0
        queries += [members[i] for i in order[:n_queries]]
        gallery += [members[i] for i in order[n_queries:]]
    return Split(queries, gallery)


#: The leave-categories-out protocol holds this many categories out of training (a third of them
#: on catalogues with fewer than 30), chosen once with SPLIT_SEED so no figure can be tuned on them.
HOLDOUT_CATEGORIES = 10


def holdout_categories(items: Sequence[CatalogueItem]) -> list[str]:
    """The categories the leave-categories-out protocol never trains on (fixed for a catalogue)."""
    categories = sorted({item.category for item in items})
    count = min(HOLDOUT_CATEGORIES, max(1, len(categories) // 3))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(categories))
    return sorted(categories[i] for i in order[:count])


def split_by_holdout(items: Sequence[CatalogueItem]) -> tuple[list[CatalogueItem], list[CatalogueItem]]:
    """(items of the categories trained on, items of the held-out categories)."""
    held_out = set(holdout_categories(items))
    return [i for i in items if i.category not in held_out], [i for i in items if i.category in held_out]


def catalogue_fingerprint(items: Sequence[CatalogueItem]) -> str:
    """A hash of ids, categories and image bytes: same fingerprint, same training data."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda item: item.id):
        digest.update(f"{item.id}\0{item.category}\0".encode())
        digest.update(hashlib.sha256(item.path.read_bytes()).digest() if item.path.is_file() else b"-")
    return digest.hexdigest()


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(function: Callable[[T], R], values: Iterable[T]) -> list[R]:
    """``map`` on a few threads: PIL releases the GIL while it decodes and resizes."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, values))


@dataclass(frozen=True)
class Pixels:
    """Images through a deterministic transform once, so evaluation does its PIL work once.

    Held as uint8 with the transform's `Normalisation` when it ends in ToTensor + Normalize
    (open_clip's does): a quarter of the memory, and `batch` returns its own floats bitwise.
    """

    values: torch.Tensor  # (N, 3, H, W) on the device that evaluates: uint8, or float if not split
    normalisation: Normalisation | None

    @classmethod
    def of(cls, images: Sequence[Image.Image], transform: Preprocess, device: torch.device) -> Pixels:
        split = split_normalisation(transform)
        steps, normalisation = split if split else (transform, None)
        values = torch.stack(parallel_map(steps, images)) if images else torch.zeros(0, 3, 1, 1)
        return cls(values.to(device), normalisation.to(device) if normalisation else None)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Images ``start:stop`` as the transform made them (normalised float32)."""
        values = self.values[start:stop]
        return self.normalisation(values) if self.normalisation else values


@dataclass
class ImageCache:
    """Every usable image decoded once and shrunk, so epochs never touch JPEG decoding again."""

    images: list[Image.Image]
    items: list[CatalogueItem]
    #: The images through the val transform once (`with_pixels`): evaluation reads these.
    pixels: Pixels | None = None

    @classmethod
    def load(cls, items: Sequence[CatalogueItem], side: int | None, max_pixels: int) -> ImageCache:
        """Decode ``items`` (bad ones are skipped), the shorter side reduced to ``side`` if given."""

        def decode(item: CatalogueItem) -> Image.Image | None:
            try:
                image = decode_image(read_bytes(item.path), max_pixels)
            except InvalidImage:
                return None
            scale = side / min(image.size) if side else 1.0
            if scale < 1:
                image = image.resize(
                    (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
                )
            return image

        decoded = parallel_map(decode, items)
        kept = [(image, item) for image, item in zip(decoded, items, strict=True) if image is not None]
        return cls([image for image, _ in kept], [item for _, item in kept])

    def with_pixels(self, transform: Preprocess, device: torch.device) -> ImageCache:
        """This cache with its images through ``transform`` once, kept on ``device`` (`Pixels`)."""
        return replace(self, pixels=Pixels.of(self.images, transform, device))


def require_scorable(
    queries: Sequence[CatalogueItem], gallery: Sequence[CatalogueItem] | None, label: str = "category"
) -> None:
    """Refuse in words a split that retrieval cannot be scored on (every category with one
    readable photo, say) instead of failing inside the metrics, or scoring 1.0 for any ranking
    (one category); the items given are the readable ones; ``gallery`` None: leave-one-out."""
    if gallery is None and len(queries) < 2:
        raise CatalogueError(f"{len(queries)} readable photo(s): each query needs another photo to rank")
    if not queries:
        raise CatalogueError(f"no held-out queries: scoring needs a {label} with at least two readable photos")
    if gallery is not None and not gallery:
        raise CatalogueError("no readable gallery photos to rank the held-out queries against")
    labels = {label_of(item, label) for item in [*queries, *(gallery or [])]}
    if len(labels) < 2:
        raise CatalogueError(f"one {label} only ({labels.pop()}): any ranking would score 1.0; scoring needs two")


class LabelledImages(Dataset):
    """Cached images through a transform, with their class index."""

    def __init__(
        self,
        cache: ImageCache,
        transform: Callable[[Image.Image], torch.Tensor],
        classes: list[str],
        label: str = "category",
        views: int = 1,
    ):
        self.cache = cache
        self.transform = transform
        self.views = views
        index = {name: i for i, name in enumerate(classes)}
        self.labels = torch.tensor([index[label_of(item, label)] for item in cache.items])

    def __len__(self) -> int:
        return len(self.cache.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed image, or ``views`` of them stacked (views, 3, H, W), and its class."""
        image = self.cache.images[i]
        if self.views == 1:
            return self.transform(image), self.labels[i]
        return torch.stack([self.transform(image) for _ in range(self.views)]), self.labels[i]
