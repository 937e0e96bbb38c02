"""What to ask Qdrant: filters (run inside the search), and how results are scored and grouped.

Pure request building with qdrant-client's typed models; `lookalike.store.VectorStore` sends them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client import models

from lookalike.points import CATEGORY, COLOUR, EMBEDDING, METADATA, SHA256, point_id
from lookalike.settings import Settings

#: Filter text that also matches a stored integer: ASCII digits only (`str.isdigit` accepts "²"),
#: and within Qdrant's int64 range.
INTEGER = re.compile(r"-?[0-9]{1,18}")
#: A fused query rescores the union of each vector's nearest candidates, at least this many each.
FUSION_CANDIDATES = 100


@dataclass(frozen=True)
class SearchFilter:
    """Restrictions applied inside Qdrant's search (never as a post-filter)."""

    categories: Sequence[str] = ()
    exclude: Sequence[str] = ()  # item ids
    metadata: dict[str, Sequence[str]] = field(default_factory=dict)  # field -> any of these values
    exclude_sha256: Sequence[str] = ()  # hide items whose image bytes are exactly these

    def to_qdrant(self, also_exclude: Sequence[str] = ()) -> models.Filter | None:
        must: list[models.Condition] = []
        if self.categories:
            must.append(models.FieldCondition(key=CATEGORY, match=models.MatchAny(any=list(self.categories))))
        for name, values in self.metadata.items():
            must.append(_metadata_condition(name, values))
        excluded = [point_id(item_id) for item_id in (*self.exclude, *also_exclude)]
        must_not: list[models.Condition] = [models.HasIdCondition(has_id=excluded)] if excluded else []
        if self.exclude_sha256:
            must_not.append(models.FieldCondition(key=SHA256, match=models.MatchAny(any=list(self.exclude_sha256))))
        if not must and not must_not:
            return None
        return models.Filter(must=must or None, must_not=must_not or None)


def _metadata_condition(name: str, values: Sequence[str]) -> models.Filter:
    """Match a metadata field given as text: "12" also matches the number 12, "true" the boolean."""
    key = f"{METADATA}.{name}"
    should: list[models.Condition] = [models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))]
    integers = [int(v) for v in values if INTEGER.fullmatch(v)]
    if integers:
        should.append(models.FieldCondition(key=key, match=models.MatchAny(any=integers)))
    for value in values:
        if value.lower() in ("true", "false"):
            should.append(models.FieldCondition(key=key, match=models.MatchValue(value=value.lower() == "true")))
    return models.Filter(should=should)


@dataclass(frozen=True)
class Ranking:
    """How results are scored, grouped and paged."""

    limit: int = 10
    offset: int = 0
    score_threshold: float | None = None
    #: 0 = the embedding alone, 1 = colour alone; between, score = (1-w)·embedding + w·colour cosine.
    colour_weight: float = 0.0
    one_per_product: bool = False  # each product once, by its best-scoring photo


@dataclass(frozen=True)
class NearDuplicateRule:
    """Both vectors must be this similar (cosine) for two photos to count as the same."""

    min_similarity: float
    min_colour_similarity: float

    @classmethod
    def from_settings(cls, settings: Settings) -> NearDuplicateRule | None:
        """NEAR_DUPLICATE_*; None when the check is off (empty NEAR_DUPLICATE_SIMILARITY)."""
        if settings.near_duplicate_similarity is None:
            return None
        return cls(settings.near_duplicate_similarity, settings.near_duplicate_colour_similarity)


@dataclass(frozen=True)
class SimilarQuery:
    """One entry of a batch: the look-alikes of a stored item."""

    item_id: str
    search_filter: SearchFilter
    ranking: Ranking


def vector_of(values: np.ndarray) -> list[float]:
    return values.astype(np.float32).tolist()


def scoring_arguments(embedding_query: Any, colour_query: Any, ranking: Ranking) -> dict[str, Any]:
    """The ``query``/``using``/``prefetch`` arguments that score by the ranking's colour weight.

    Between 0 and 1 this is one Qdrant query: the nearest candidates by each vector are pooled,
    every pooled candidate is scored by both vectors (a re-scoring prefetch each), and a formula
    adds the two scores with their weights. Exact for every pooled candidate, so the top results
    equal an exhaustive fused ranking unless an item is outside both candidate lists.
    """
    weight = ranking.colour_weight
    if weight <= 0:
        return {"query": embedding_query, "using": EMBEDDING}
    if weight >= 1:
        return {"query": colour_query, "using": COLOUR}
    depth = max(FUSION_CANDIDATES, 2 * (ranking.offset + ranking.limit))
    pool = [
        models.Prefetch(query=embedding_query, using=EMBEDDING, limit=depth),
        models.Prefetch(query=colour_query, using=COLOUR, limit=depth),
    ]
    rescored = [
        models.Prefetch(query=embedding_query, using=EMBEDDING, limit=2 * depth, prefetch=pool),
        models.Prefetch(query=colour_query, using=COLOUR, limit=2 * depth, prefetch=pool),
    ]
    formula = models.SumExpression(
        sum=[
            models.MultExpression(mult=[1.0 - weight, "$score[0]"]),
            models.MultExpression(mult=[weight, "$score[1]"]),
        ]
    )
    return {"query": models.FormulaQuery(formula=formula), "prefetch": rescored}
