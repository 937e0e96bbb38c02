"""Diverse results: maximal marginal relevance (Carbonell & Goldstein, 1998) over a query's hits.

Each step takes the candidate with the best (1 - d)·relevance - d·(its similarity to the closest
one already taken), so one product's near-identical variants do not fill a page. It runs in the
store layer over hits that carry their vectors, which makes it work the same for every engine and
every query shape (fused colour ranking, recommend, grouping, filters): Qdrant's own MMR takes a
single plain vector query only. Similarity between hits is the ranking's own: (1 - w)·embedding
cosine + w·colour cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from lookalike.points import COLOUR, EMBEDDING

#: Candidates re-ranked: at least this many, or 4x the page, whichever is more.
MMR_CANDIDATES = 50


class Scored(Protocol):
    score: float
    vectors: dict


def candidates_for(limit: int, offset: int) -> int:
    return max(MMR_CANDIDATES, 4 * (offset + limit))


def most_relevant_and_diverse(hits: Sequence[Scored], count: int, diversity: float, colour_weight: float) -> list[int]:
    """Indexes of ``count`` hits in maximal-marginal-relevance order (``diversity`` in 0..1)."""
    if not hits:
        return []
    embeddings = np.asarray([hit.vectors[EMBEDDING] for hit in hits], dtype=np.float32)
    colours = np.asarray([hit.vectors[COLOUR] for hit in hits], dtype=np.float32)
    similarity = (1 - colour_weight) * embeddings @ embeddings.T + colour_weight * colours @ colours.T
    relevance = np.asarray([hit.score for hit in hits], dtype=np.float32)
    chosen = [int(relevance.argmax())]
    closest = similarity[chosen[0]].copy()  # each hit's similarity to the closest chosen one
    while len(chosen) < min(count, len(hits)):
        marginal = (1 - diversity) * relevance - diversity * closest
        marginal[chosen] = -np.inf
        chosen.append(int(marginal.argmax()))
        closest = np.maximum(closest, similarity[chosen[-1]])
    return chosen
