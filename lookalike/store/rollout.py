"""The collection lifecycle: one physical collection per model, behind the ``COLLECTION`` alias.

A reindex builds the new model's collection beside the serving one and switches the alias in one
engine call; the service pins the collection the alias names when it starts (`resolve`). This is
the only module that creates, switches or drops collections; each engine supplies the primitives.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from lookalike.colour import DIM as COLOUR_DIM
from lookalike.errors import CollectionMissing, ModelMismatch, StoreError
from lookalike.points import COLOUR, EMBEDDING, LAYOUT, MODEL, payload_indexes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection was created with: each named vector's size, and its metadata."""

    vector_sizes: dict[str, int]
    metadata: dict[str, Any]


class CollectionLifecycle(ABC):
    """Aliases and collections of one engine; ``collection`` is the alias (or a physical name)."""

    collection: str

    def resolve(self) -> str | None:
        """The collection behind this store's name: the alias target, the name itself, or None."""
        with self._call():
            target = self._aliases().get(self.collection)
            if target is not None:
                return target
            return self.collection if self._exists(self.collection) else None

    def collection_exists(self) -> bool:
        return self.resolve() is not None

    def physical_name(self) -> str:
        """The collection behind this store's name, without reading it (it may be damaged)."""
        with self._call():
            return self._aliases().get(self.collection, self.collection)

    def bound_to(self, collection: str) -> Self:
        """The same engine (client, lock) on another collection name."""
        twin = copy.copy(self)
        twin.collection = collection
        return twin

    def pinned(self) -> Self:
        """This store bound to the collection its alias names now: a later alias switch (a
        reindex) does not move it. Raises `StoreUnavailable` when there is none yet."""
        physical = self.resolve()
        if physical is None:
            raise self._missing_collection()
        return self.bound_to(physical)

    def for_model(self, model: str) -> Self:
        """The store of this model's own collection, ``<name>__<model>__<layout>``."""
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")[:120]
        return self.bound_to(f"{self.collection}__{slug}__{LAYOUT}")

    def ensure_collection(self, dim: int, model: str, filterable_fields: Sequence[str] = ()) -> None:
        """Create the collection for this model (behind an alias), or check the existing one matches."""
        if self.collection_exists():
            self.check_model(dim, model)
            return
        target = self.for_model(model)
        target.create_physical(dim, model, filterable_fields)
        try:
            self.switch_alias(target.collection)
        except StoreError:
            if self.resolve() != target.collection:  # else another process pointed it there meanwhile
                raise

    def create_physical(self, dim: int, model: str, filterable_fields: Sequence[str] = ()) -> None:
        """Create this store's collection unless it exists (a reindex killed midway resumes into it),
        else check that it holds this model's embeddings."""
        if not self._created(dim, model, filterable_fields):
            self.check_model(dim, model)

    def _created(self, dim: int, model: str, filterable_fields: Sequence[str]) -> bool:
        """Create the collection; False when it exists, also when another process created it
        between the check and the creation (on a server: parallel ``--shard`` runs, the first
        PUTs of two API workers), which fails the creation."""
        try:
            with self._call():
                if self._exists(self.collection):
                    return False
                metadata = {MODEL: model, "dim": dim, "layout": LAYOUT}
                vectors = {EMBEDDING: dim, COLOUR: COLOUR_DIM}
                self._create(self.collection, vectors, metadata, payload_indexes(filterable_fields))
        except StoreError:
            with self._call():
                if not self._exists(self.collection):  # a failure of its own
                    raise
            log.info("collection created meanwhile by another process", extra={"collection": self.collection})
            return False
        log.info("collection created", extra={"collection": self.collection, "model": model, "dim": dim})
        return True

    def check_model(self, dim: int, model: str) -> None:
        """Raise `ModelMismatch` unless the collection holds embeddings of exactly this model."""
        with self._call():
            info = self._describe(self.collection)
        stored_model, stored_dim = info.metadata.get(MODEL), info.vector_sizes.get(EMBEDDING)
        if stored_model != model or stored_dim != dim:
            raise ModelMismatch(
                f"collection {self.collection!r} holds embeddings of model {stored_model} (dim {stored_dim}); "
                f"this process loaded {model} (dim {dim}). Set MODEL_NAME/MODEL_PRETRAINED/MODEL_CHECKPOINT "
                "back to that model, or build the new model's collection with `python -m ingest --reindex`"
            )
        if COLOUR not in info.vector_sizes:
            raise ModelMismatch(
                f"collection {self.collection!r} was built before items had colour vectors; rebuild it with "
                "`python -m ingest --reindex --drop-old` (searches keep working until the switch)"
            )

    def ensure_indexes(self, filterable_fields: Sequence[str]) -> list[str]:
        """Index the payload keys that ``FILTERABLE_FIELDS`` names and the collection does not
        index yet (a field added after the collection was built, or given another kind): its
        filters then run through an index, as in a collection built with it. Returns those keys."""
        wanted = payload_indexes(filterable_fields)
        physical = self.physical_name()
        with self._call():
            present = self._indexes(physical)
            added = [] if present is None else [key for key, kind in wanted.items() if present.get(key) != kind]
            for key in added:
                self._create_index(physical, key, wanted[key])
        for key in added:
            log.info("payload index added", extra={"collection": physical, "key": key, "kind": wanted[key]})
        return added

    def metadata(self) -> dict[str, Any]:
        """The collection's metadata (model, layout, calibration)."""
        with self._call():
            return dict(self._describe(self.collection).metadata)

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the collection's."""
        physical = self.physical_name()
        with self._call():
            self._merge_metadata(physical, metadata)

    def is_plain_collection(self) -> bool:
        """True when this store's name is a collection itself, not an alias (older layouts)."""
        return self.resolve() == self.collection

    def plain_collection_error(self) -> StoreError:
        return StoreError(
            f"{self.collection!r} is a plain collection, not an alias: run the reindex with --drop-old "
            "to replace it (searches fail for a moment), or choose another COLLECTION name"
        )

    def switch_alias(self, target: str, *, replace_plain: bool = False) -> str | None:
        """Point this store's name at ``target`` in one engine call; returns the previous target.

        A plain collection under the name (made before collections had aliases) is only replaced
        with ``replace_plain``: it is deleted first, so the name is missing for a moment.
        """
        previous = self.resolve()
        if previous == self.collection:
            if not replace_plain:
                raise self.plain_collection_error()
            log.warning("replacing a plain collection by an alias", extra={"collection": self.collection})
            self.drop(self.collection)
        with self._call():
            self._set_alias(self.collection, target)
        log.info("alias switched", extra={"alias": self.collection, "to": target, "from": previous})
        return None if previous == self.collection else previous

    def drop(self, collection: str) -> None:
        with self._call():
            self._delete_collection(collection)
        log.info("collection dropped", extra={"collection": collection})

    def _missing_collection(self) -> CollectionMissing:
        return CollectionMissing(
            f"collection {self.collection!r} does not exist yet: run `python -m ingest` "
            "(or add items with PUT /v1/items/<id>)"
        )

    # -- what each engine supplies ----------------------------------------------------------------

    @abstractmethod
    def _call(self) -> contextlib.AbstractContextManager[None]:
        """Around every engine call: serialise embedded calls; turn engine failures into `StoreError`s."""

    @abstractmethod
    def _aliases(self) -> dict[str, str]: ...

    @abstractmethod
    def _exists(self, collection: str) -> bool: ...

    @abstractmethod
    def _create(self, collection: str, vector_sizes: dict[str, int], metadata: dict, indexes: dict[str, str]) -> None:
        """Create a collection of cosine vectors, with payload ``indexes`` (key -> "keyword"/"number")."""

    @abstractmethod
    def _indexes(self, collection: str) -> dict[str, str] | None:
        """The payload indexes (key -> "keyword"/"number"); None for an engine that has none."""

    @abstractmethod
    def _create_index(self, collection: str, key: str, kind: str) -> None: ...

    @abstractmethod
    def _describe(self, collection: str) -> CollectionInfo:
        """A collection (or the one an alias names); `StoreUnavailable` when there is none."""

    @abstractmethod
    def _merge_metadata(self, collection: str, metadata: dict[str, Any]) -> None: ...

    @abstractmethod
    def _set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` (replacing where it pointed) in one step."""

    @abstractmethod
    def _delete_collection(self, collection: str) -> None: ...
