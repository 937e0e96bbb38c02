"""Duplicates: the same bytes under two ids (by hash, before decoding), and photos that look the
same (by vector similarity, after embedding): a re-upload, a re-encoded or resized copy.

Both are reported (codes ``duplicate`` and ``near_duplicate``) naming the item they copy; whether
they are still indexed is the caller's choice (``--skip-duplicates``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import CatalogueItem
from lookalike.looks import Look
from lookalike.queries import NearDuplicateRule
from lookalike.store import VectorStore


class ExactDuplicates:
    """Items whose image bytes equal an earlier item's, seen in catalogue order: reported and counted."""

    def __init__(self, report: ErrorReport, summary: IngestSummary) -> None:
        self.report, self.summary = report, summary
        self._first_with: dict[str, str] = {}  # sha256 -> the first item id with those bytes

    def seen(self, item: CatalogueItem, sha256: str) -> bool:
        """True (and reported) when an earlier item had these bytes."""
        original = self._first_with.setdefault(sha256, item.id)
        if original == item.id:
            return False
        self.report.duplicate(item, original)
        self.summary.duplicates += 1
        return True


def report_near_duplicates(
    items: Sequence[CatalogueItem],
    looks: Sequence[Look],
    store: VectorStore,
    rule: NearDuplicateRule,
    report: ErrorReport,
    summary: IngestSummary,
    exact_duplicates: set[str],
) -> set[str]:
    """Items of one batch that look the same as a stored item or an earlier item of the batch.

    Stored items are found by Qdrant (one batch query); the batch's own items are not stored
    yet, so they are compared with each other here. Items in ``exact_duplicates`` are already
    reported. Returns the ids of the near-duplicates.
    """
    stored_matches = store.look_alikes(looks, [i.id for i in items], rule)
    embeddings = np.stack([look.embedding for look in looks])
    colours = np.stack([look.colour for look in looks])
    colour_similarity = colours @ colours.T
    alike = (embeddings @ embeddings.T >= rule.min_similarity) & (colour_similarity >= rule.min_colour_similarity)
    found: set[str] = set()
    for index, (item, match) in enumerate(zip(items, stored_matches, strict=True)):
        earlier = np.flatnonzero(alike[index, :index])
        if item.id in exact_duplicates:
            continue
        if match is not None:
            report.near_duplicate(item, match.item.id, match.score)
        elif earlier.size:
            report.near_duplicate(item, items[earlier[0]].id, float(colour_similarity[index, earlier[0]]))
        else:
            continue
        found.add(item.id)
    summary.near_duplicates += len(found)
    return found
