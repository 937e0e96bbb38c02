"""How an item is laid out as a Qdrant point: its id, its named vectors, its payload keys.

*Point* is Qdrant's word; the rest of the code speaks of *items*. Shared by the store (which
writes and reads points) and the queries (which filter on payload keys and name vectors).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lookalike.errors import DAMAGED_HINT, StoreDamaged

#: The named vector that holds the encoder's embedding (shape, texture).
EMBEDDING = "embedding"
#: The named vector that holds the colour descriptor (`lookalike.colour`).
COLOUR = "colour"
# Payload keys.
ITEM_ID = "item_id"
CATEGORY = "category"
IMAGE = "image"
IMAGE_SOURCE = "image_source"  # "catalogue" (relative to CATALOGUE_DIR) or "upload" (UPLOAD_DIR)
SHA256 = "sha256"
MODEL = "model"
METADATA = "metadata"
PRODUCT_ID = "product_id"  # the item's product (several photos, one product); its own id if none
#: The metadata values that are numbers or booleans (as 0/1), as floats: what boosts read. A formula
#: over a payload value that is not a number fails the whole query, so boosts never read `metadata`.
NUMBERS = "numbers"
#: Suffix of physical collection names: bumped when the point layout changes (v2: + colour vector,
#: product_id), so a reindex builds a fresh collection beside one of the older layout.
LAYOUT = "v2"
#: Namespace of the UUIDv5 point ids: the same item id always maps to the same point.
POINT_NAMESPACE = uuid.UUID("6f1c4f0e-4b4e-5b8a-9a57-6c6f6f6b616c")


def payload_indexes(filterable_fields: Sequence[str]) -> dict[str, str]:
    """Payload key -> index kind ("keyword" or "number"): the item keys, then each filterable
    metadata field (``name`` is a keyword, ``name:number`` a numeric one, for range filters)."""
    indexes = {CATEGORY: "keyword", ITEM_ID: "keyword", PRODUCT_ID: "keyword"}
    for entry in filterable_fields:
        name, _, kind = entry.partition(":")
        indexes[f"{METADATA}.{name}"] = kind or "keyword"
    return indexes


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class StoredItem:
    """What the store keeps about an item besides its embedding."""

    id: str
    category: str
    image: str
    sha256: str
    model: str
    image_source: str = "catalogue"
    metadata: dict[str, Any] = field(default_factory=dict)
    product_id: str | None = None  # None: the item is a product of its own

    @property
    def product(self) -> str:
        """What `group_by=product_id` groups on."""
        return self.product_id or self.id

    def payload(self) -> dict[str, Any]:
        return {
            ITEM_ID: self.id,
            PRODUCT_ID: self.product,
            CATEGORY: self.category,
            IMAGE: self.image,
            IMAGE_SOURCE: self.image_source,
            SHA256: self.sha256,
            MODEL: self.model,
            METADATA: self.metadata,
            NUMBERS: numbers_of(self.metadata),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> StoredItem:
        """The item a point's payload describes; `StoreDamaged` when the payload is unreadable."""
        try:
            return cls._from_payload(payload)
        except (KeyError, TypeError) as e:
            raise StoreDamaged(f"a stored item has an unreadable payload (no {e}); {DAMAGED_HINT}") from e

    @classmethod
    def _from_payload(cls, payload: dict[str, Any]) -> StoredItem:
        return cls(
            id=payload[ITEM_ID],
            category=payload[CATEGORY],
            image=payload[IMAGE],
            sha256=payload[SHA256],
            model=payload[MODEL],
            image_source=payload.get(IMAGE_SOURCE, "catalogue"),
            metadata=payload.get(METADATA) or {},
            product_id=None if payload.get(PRODUCT_ID) in (None, payload[ITEM_ID]) else payload[PRODUCT_ID],
        )


def numbers_of(metadata: dict[str, Any]) -> dict[str, float]:
    """The numeric mirror of metadata: finite numbers as they are, booleans as 1.0 / 0.0."""
    return {
        name: float(value)
        for name, value in metadata.items()
        if isinstance(value, int | float) and math.isfinite(value)  # bool is an int
    }


@dataclass(frozen=True)
class Hit:
    item: StoredItem
    score: float
