"""What one run may remove from a collection, checked before it removes anything.

A catalogue that shrank by mistake (an unmounted share lists nothing, a manifest cut short by a
failed copy lists its head) and a rebuild whose photos could not be read both look like items
that left the catalogue: ``--prune`` would delete them, and a reindex would switch to a
collection without them. Past `PruneLimit` the run stops instead and says how many.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from lookalike.catalogue import Catalogue
from lookalike.errors import CatalogueError
from lookalike.store import VectorStore

#: What ``--prune`` may remove of the collection's catalogue items unless told more (`PruneLimit`).
DEFAULT_MAX_PRUNE_PERCENT = 25.0


@dataclass(frozen=True)
class PruneLimit:
    """How many of the collection's catalogue items one ``--prune`` or ``--reindex`` may remove: a
    count (``500``) or a share of them (``25%``), like rsync's ``--max-delete``. A manifest cut
    short by a failed copy lists only its head, and its tail would go as "left the catalogue"."""

    count: int | None = None
    percent: float = DEFAULT_MAX_PRUNE_PERCENT

    @classmethod
    def parse(cls, text: str) -> PruneLimit:
        """``N`` or ``P%`` (0-100); ValueError otherwise."""
        number = text.strip().removesuffix("%")
        if number == text.strip():
            if not number.isdigit():
                raise ValueError(f"{text!r} is neither a count of items nor a percentage like 25%")
            return cls(count=int(number))
        try:
            percent = float(number)
        except ValueError:
            percent = math.nan
        if not 0 <= percent <= 100:
            raise ValueError(f"{text!r} is not a percentage between 0% and 100%")
        return cls(percent=percent)

    def allows(self, removed: int, held: int) -> bool:
        return removed <= (self.count if self.count is not None else held * self.percent / 100)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def unlisted(catalogue: Catalogue, stored_ids: Iterable[str]) -> list[str]:
    """The stored items of the catalogue's source (and shard) that the catalogue no longer lists."""
    listed = {item.id for item in catalogue.items} | {e.item_id for e in catalogue.errors if e.item_id}
    mine = catalogue.shard.holds if catalogue.shard else lambda item_id: True  # other workers' items stay
    return [i for i in stored_ids if i not in listed and mine(i)]


def refuse_mass_removal(catalogue: Catalogue, store: VectorStore, limit: PruneLimit = PruneLimit()) -> None:
    """Before ``--prune`` or ``--reindex``, on the whole catalogue (before any ``--shard``):
    refuse, before any write, to remove more of the collection's catalogue items than ``limit``,
    and always to remove them all because the catalogue lists nothing (an unmounted share, a
    feed that came out blank). A shop with API items only reindexes with an empty catalogue."""
    if not store.collection_exists():
        return
    held = list(store.item_ids(image_source=catalogue.source))
    if not held:
        return
    if not catalogue.items and not catalogue.errors:
        raise CatalogueError(
            f"catalogue {catalogue.root} lists no items: --prune or --reindex would remove every catalogue item "
            "from the collection; check that it is the right folder or manifest (a share not mounted?)"
        )
    removed = len(unlisted(catalogue, held))
    if not limit.allows(removed, len(held)):
        raise CatalogueError(
            f"catalogue {catalogue.root} no longer lists {removed:,} of the collection's {len(held):,} catalogue "
            f"items ({removed / len(held):.0%}): --prune or --reindex would remove more than --max-prune {limit} "
            "allows; check that the catalogue is whole (a manifest cut short, a copy half done?), or if so many items "
            "really left it, run again with --max-prune 100%"
        )


def refuse_to_leave_out(store: VectorStore, target: VectorStore, catalogue: Catalogue, limit: PruneLimit) -> None:
    """Before the switch: the new collection must hold the serving one's catalogue items, but for
    what ``limit`` allows (those the catalogue dropped, and those that failed in this run: photos
    that could not be read, a share gone midway). Otherwise the old collection keeps serving."""
    if target.collection == store.physical_name() or not store.collection_exists():
        return
    serving = set(store.item_ids(image_source=catalogue.source))
    missing = len(serving - set(target.item_ids(image_source=catalogue.source)))
    if serving and not limit.allows(missing, len(serving)):
        raise CatalogueError(
            f"the new collection {target.collection!r} lacks {missing:,} of the {len(serving):,} catalogue items "
            f"that {store.collection!r} serves ({missing / len(serving):.0%}), more than --max-prune {limit} "
            "allows: the alias still names the old collection. See the error report for the items that failed, "
            "then run the reindex again (it resumes), or pass --max-prune 100% if they really are gone"
        )
