"""How much colour should count on *this* catalogue, measured on the collection itself.

The best fusion weight differs by catalogue (0.2 on the shared one; colour alone on packaged
goods, where the encoder sees cartons as alike). So after ingest the collection ranks a fixed
sample of its own items against the rest (leave-one-out), at every weight of a grid from the
embedding alone (0) to colour alone (1), and keeps the weight with the best P@4 (relevant = same
category). That weight is stored in the collection's metadata, and searches that give no
`colour_weight` use it (COLOUR_WEIGHT, when set, still overrides). Computed from the stored
vectors in numpy: exact fused scores, no query per item and weight.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lookalike.metrics import query_scores

#: Colour weights tried, from the embedding alone to colour alone.
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1.0)
#: Items queried (a fixed sample) and the most items ranked against them (the first in the store's
#: order, which is by point id: a hash of the item id, so an unbiased sample).
SAMPLE_QUERIES = 300
MAX_GALLERY = 10_000
#: Among equally good weights, the one nearest this (COLOUR_WEIGHT's default, measured on the shared
#: catalogue) is kept: shoppers see colour agreement that the category metrics cannot reward.
TIE_BREAK_WEIGHT = 0.2
#: Collection metadata key.
METADATA_KEY = "calibration"


@dataclass(frozen=True)
class Calibration:
    colour_weight: float
    #: Weight (as text, e.g. "0.2") -> P@4 and mAP@R of the fused ranking at that weight.
    p_at_4: dict[str, float]
    map_at_r: dict[str, float]
    queries: int
    gallery: int
    seconds: float

    @property
    def embedding_p_at_4(self) -> float:
        return self.p_at_4[_key(0.0)]

    @property
    def colour_p_at_4(self) -> float:
        return self.p_at_4[_key(1.0)]

    @property
    def calibrated_p_at_4(self) -> float:
        return self.p_at_4[_key(self.colour_weight)]

    def to_metadata(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> Calibration | None:
        found = (metadata or {}).get(METADATA_KEY)
        if not isinstance(found, dict):
            return None
        try:
            return cls(**found)
        except TypeError:  # written by another version: as if there were none
            return None

    def line(self) -> str:
        return (
            f"calibration: colour_weight={self.colour_weight:g} P@4 embedding={self.embedding_p_at_4:.3f} "
            f"colour={self.colour_p_at_4:.3f} calibrated={self.calibrated_p_at_4:.3f} "
            f"(leave-one-out, {self.queries} queries against {self.gallery} items, {self.seconds:.1f}s)"
        )


def calibrate(
    embeddings: np.ndarray,
    colours: np.ndarray,
    labels: Sequence[str],
    weights: Sequence[float] = WEIGHTS,
    queries: int = SAMPLE_QUERIES,
    seed: int = 0,
) -> Calibration | None:
    """The best colour weight for these stored items, or None when their labels cannot tell
    (fewer than two categories, or no category with two items)."""
    started = time.perf_counter()
    labels_arr = np.asarray(labels)
    counts = {label: int((labels_arr == label).sum()) for label in set(labels)}
    eligible = np.flatnonzero([counts[label] >= 2 for label in labels])
    if len(counts) < 2 or len(eligible) == 0:
        return None
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(eligible, size=min(queries, len(eligible)), replace=False))
    shape = embeddings[sample] @ embeddings.T
    colour = colours[sample] @ colours.T
    n_relevant = np.array([counts[label] - 1 for label in labels_arr[sample]])
    p_at_4, map_at_r = {}, {}
    for weight in weights:
        scores = (1 - weight) * shape + weight * colour
        scores[np.arange(len(sample)), sample] = -np.inf  # leave the query itself out
        order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]
        relevant = labels_arr[order] == labels_arr[sample][:, None]
        per_query = query_scores(relevant, n_relevant, ks=(4,))
        p_at_4[_key(weight)] = round(float(per_query["P@4"].mean()), 4)
        map_at_r[_key(weight)] = round(float(per_query["mAP@R"].mean()), 4)
    # Ties (common when categories separate cleanly) go to the weight nearest the default.
    best = max(weights, key=lambda w: (p_at_4[_key(w)], map_at_r[_key(w)], -abs(w - TIE_BREAK_WEIGHT)))
    return Calibration(best, p_at_4, map_at_r, len(sample), len(labels), round(time.perf_counter() - started, 3))


def _key(weight: float) -> str:
    return f"{weight:g}"
