"""What to ask the store, in the product's terms: filters (run inside the search) and how results
are scored, pooled, grouped and paged.

One query model for every engine: `lookalike.store.qdrant` and `lookalike.store.edge` each
translate a `Query` into their own requests, so a query feature is described here once and the
store contract tests (tests/test_store.py) run it on both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike.diversity import candidates_for
from lookalike.points import COLOUR, EMBEDDING, METADATA, NUMBERS
from lookalike.settings import Settings

#: Filter text that also matches a stored integer: ASCII digits only (`str.isdigit` accepts "²"),
#: and within Qdrant's int64 range.
INTEGER = re.compile(r"-?[0-9]{1,18}")
#: A fused query rescores the union of each vector's nearest candidates, at least this many each.
FUSION_CANDIDATES = 100
#: An example of what to look for: a vector, or the id of a stored item (its stored vector).
Example = np.ndarray | str


@dataclass(frozen=True)
class Range:
    """Bounds on a numeric metadata field (any left None is open)."""

    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class SearchFilter:
    """Restrictions applied inside the engine's search (never as a post-filter)."""

    categories: Sequence[str] = ()
    exclude: Sequence[str] = ()  # item ids
    metadata: dict[str, Sequence[str]] = field(default_factory=dict)  # field -> any of these values
    exclude_sha256: Sequence[str] = ()  # hide items whose image bytes are exactly these
    image_source: str | None = None  # "catalogue" or "upload" (listing and pruning)
    ranges: dict[str, Range] = field(default_factory=dict)  # numeric field -> its bounds

    def range_keys(self) -> list[tuple[str, Range]]:
        """(payload key, bounds) of every range condition."""
        return [(f"{METADATA}.{name}", bounds) for name, bounds in self.ranges.items()]

    def excluding(self, item_ids: Sequence[str]) -> SearchFilter:
        return dataclasses.replace(self, exclude=(*self.exclude, *item_ids)) if item_ids else self


@dataclass(frozen=True)
class MetadataMatch:
    """A metadata field given as text, matched as text, and as the number or boolean it spells:
    "12" also matches the number 12, "true" the boolean (a stored list matches by any element)."""

    key: str
    texts: list[str]
    integers: list[int]
    booleans: list[bool]

    @classmethod
    def of(cls, name: str, values: Sequence[str]) -> MetadataMatch:
        integers = [int(v) for v in values if INTEGER.fullmatch(v)]
        booleans = [v.lower() == "true" for v in values if v.lower() in ("true", "false")]
        return cls(f"{METADATA}.{name}", list(values), integers, booleans)


def metadata_matches(search_filter: SearchFilter) -> list[MetadataMatch]:
    return [MetadataMatch.of(name, values) for name, values in search_filter.metadata.items()]


@dataclass(frozen=True)
class Ranking:
    """How results are scored, grouped and paged."""

    limit: int = 10
    offset: int = 0
    score_threshold: float | None = None
    #: 0 = the embedding alone, 1 = colour alone; between, score = (1-w)·embedding + w·colour cosine.
    colour_weight: float = 0.0
    one_per_product: bool = False  # each product once, by its best-scoring photo
    #: "Like this, but in <colour>" (#rrggbb or a CSS name): the query's colour, hue-shifted (`recoloured`).
    colour_target: str | None = None
    #: 0 = by relevance alone; up to 1 = maximal marginal relevance with that much weight on novelty.
    diversity: float = 0.0
    #: Business rules: score + Σ weight·field over numeric/boolean metadata (`Boost`).
    boosts: tuple[Boost, ...] = ()


@dataclass(frozen=True)
class Boost:
    """``weight × <metadata field>`` added to the similarity (booleans as 0/1; an item without a
    numeric value for the field adds 0). Applied to the nearest candidates, so similarity decides
    which items are considered and, among equal boosts, their order."""

    field: str
    weight: float


@dataclass(frozen=True)
class Term:
    """Similarity on one named vector: to ``positive[0]``, or (``recommend``) Qdrant's best-score
    recommendation over positive and negative examples."""

    using: str  # EMBEDDING or COLOUR
    positive: tuple[Example, ...]
    negative: tuple[Example, ...] = ()
    recommend: bool = False
    weight: float = 1.0  # in a fused score


@dataclass(frozen=True)
class Pool:
    """Candidates for rescoring: a term's nearest ``limit`` items (above a threshold if given)."""

    term: Term
    limit: int
    score_threshold: float | None = None


@dataclass(frozen=True)
class Query:
    """One search. Score = Σ weight·similarity over ``terms`` (no terms: a random sample), over
    the union of ``pools`` when given (else the whole collection), inside ``search_filter``."""

    terms: tuple[Term, ...]
    search_filter: SearchFilter
    limit: int
    offset: int = 0
    score_threshold: float | None = None
    pools: tuple[Pool, ...] = ()
    one_per_product: bool = False
    exact: bool = False  # every stored vector, no index (a probe that reads all of them)
    with_vectors: bool = False  # the hits' vectors too (for re-ranking by diversity)
    boosts: tuple[Boost, ...] = ()

    @property
    def fused(self) -> bool:
        """Scored by a formula over pooled candidates (several terms, or boosts), not one search."""
        return len(self.terms) > 1 or bool(self.boosts)

    def example_ids(self) -> list[str]:
        terms = (*self.terms, *(pool.term for pool in self.pools))
        return sorted({e for t in terms for e in (*t.positive, *t.negative) if isinstance(e, str)})


def ranked(search_filter: SearchFilter, ranking: Ranking, embedding: Term, colour: Term) -> Query:
    """The query that scores by the ranking's colour weight.

    Between 0 and 1 the nearest candidates by each vector are pooled, every pooled candidate is
    scored by both vectors, and the two scores are added with their weights: exact for every
    pooled candidate, so the top results equal an exhaustive fused ranking unless an item is
    outside both candidate lists.
    """
    diverse = ranking.diversity > 0  # candidates with their vectors, re-ranked by the store
    common = {
        "search_filter": search_filter,
        "limit": candidates_for(ranking.limit, ranking.offset) if diverse else ranking.limit,
        "offset": 0 if diverse else ranking.offset,
        "score_threshold": ranking.score_threshold,
        "one_per_product": ranking.one_per_product,
        "with_vectors": diverse,
    }
    weight = ranking.colour_weight
    depth = max(FUSION_CANDIDATES, 2 * (ranking.offset + ranking.limit))
    boosts = tuple(b for b in ranking.boosts if b.weight != 0)
    if weight <= 0 or weight >= 1:  # one vector: boosts re-rank its nearest candidates
        term = embedding if weight <= 0 else colour
        return Query((term,), pools=(Pool(term, depth),) if boosts else (), boosts=boosts, **common)
    terms = (dataclasses.replace(embedding, weight=1.0 - weight), dataclasses.replace(colour, weight=weight))
    return Query(terms, pools=(Pool(embedding, depth), Pool(colour, depth)), boosts=boosts, **common)


def formula_terms(query: Query) -> list[tuple[float, str]]:
    """(weight, variable) pairs of a fused score: each term's similarity, then each boost's field
    in the numeric mirror of the metadata (`points.NUMBERS`)."""
    similarities = [(t.weight, f"$score[{n}]") for n, t in enumerate(query.terms)]
    return similarities + [(b.weight, f"{NUMBERS}.{b.field}") for b in query.boosts]


def formula_defaults(query: Query) -> dict[str, float]:
    """An item without a number for a boosted field adds nothing (instead of failing the query)."""
    return {f"{NUMBERS}.{b.field}": 0.0 for b in query.boosts}


def nearest(embedding: Example, colour: Example) -> tuple[Term, Term]:
    return Term(EMBEDDING, (embedding,)), Term(COLOUR, (colour,))


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

    def query(self, embedding: np.ndarray, colour: np.ndarray, item_id: str) -> Query:
        """Embedding candidates above the threshold, rescored by colour with its own threshold."""
        return Query(
            (Term(COLOUR, (colour,)),),
            SearchFilter(exclude=[item_id]),
            limit=1,
            score_threshold=self.min_colour_similarity,
            pools=(Pool(Term(EMBEDDING, (embedding,)), 8, self.min_similarity),),
        )


@dataclass(frozen=True)
class SimilarQuery:
    """One entry of a batch: the look-alikes of a stored item."""

    item_id: str
    search_filter: SearchFilter
    ranking: Ranking
