"""The per-app objects (settings, encoder, store), kept in ``app.extensions`` like Flask extensions.

Views reach them through `get_resources()`; nothing is created at import time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from flask import current_app
from PIL import Image

from lookalike.calibration import Calibration
from lookalike.errors import StoreError
from lookalike.looks import Look
from lookalike.runtime import Encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore
from service.inference import InferenceThread
from service.observability import ServiceMetrics

EXTENSION_KEY = "lookalike"
#: How long `Resources.has_category` trusts its last facet count of the collection's categories.
CATEGORIES_TTL_S = 30.0


@dataclass
class Resources:
    settings: Settings
    store: VectorStore
    metrics: ServiceMetrics
    inference: InferenceThread
    #: Set once the collection was seen to exist and to hold this encoder's embeddings.
    collection_checked: bool = field(default=False)
    #: The collection's measured best colour weight (read with the collection check).
    calibration: Calibration | None = None
    _checking: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _categories: tuple[float, frozenset[str]] = field(default=(-CATEGORIES_TTL_S, frozenset()), repr=False)

    @property
    def colour_weight(self) -> float:
        """The weight of searches that give none: COLOUR_WEIGHT when set explicitly, else the one
        calibrated on this collection by ingest, else COLOUR_WEIGHT's default."""
        if "colour_weight" in self.settings.model_fields_set or self.calibration is None:
            return self.settings.colour_weight
        return self.calibration.colour_weight

    @property
    def encoder(self) -> Encoder:
        """The model, for its identity, dimension and head; forward passes go through `looks`."""
        return self.inference.encoder

    def looks(self, images: list[Image.Image], kind: str) -> list[Look]:
        """Embed and colour-describe photos (timed as ``kind`` of request), on the inference thread."""
        with self.metrics.encode.labels(kind).time():
            return self.inference.looks(images)

    def has_category(self, name: str) -> bool:
        """Whether the collection holds items of ``name``, by a facet count at most
        `CATEGORIES_TTL_S` old: `category=auto` must not filter by a class it lacks."""
        read_at, names = self._categories
        if time.monotonic() - read_at >= CATEGORIES_TTL_S:
            names = frozenset(category for category, _ in self.store.categories())
            self._categories = (time.monotonic(), names)  # one assignment: threads see old or new
        return name in names

    def check_collection(self, *, force: bool = False) -> None:
        """Raise a `StoreError` unless the collection exists and matches the loaded model.

        The first success pins the collection behind the COLLECTION alias: when a reindex later
        switches the alias to another model's collection, this process keeps answering from the
        one that matches its model until it is restarted (or reloaded) with the new model.
        """
        if self.collection_checked and not force:
            return
        with self._checking:  # request threads see the old store or the pinned one, never half
            pinned = self.store.pinned()  # itself, once pinned
            pinned.check_model(self.encoder.dim, self.encoder.identity)
            self.calibration = Calibration.from_metadata(pinned.metadata())
            self.store = pinned
            self.collection_checked = True


def get_resources() -> Resources:
    return current_app.extensions[EXTENSION_KEY]


def ready_error(resources: Resources, *, thorough: bool = False) -> StoreError | None:
    """Why the service cannot answer searches right now, or None when it can: the collection is
    this model's, and it answers a read and a query (``thorough``: over every vector, at start-up)."""
    try:
        resources.check_collection(force=True)
        resources.store.probe(thorough=thorough)
    except StoreError as e:
        resources.collection_checked = False
        return e
    return None
