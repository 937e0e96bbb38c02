"""Retrieval metrics for the evaluation protocol: P@k and mAP@R, overall and per category.

Each query ranks the whole gallery by cosine similarity (embeddings are L2-normalised, so a dot
product). A gallery item is relevant when it shares the query's category. mAP@R (Musgrave et al.,
"A Metric Learning Reality Check") averages precision at each relevant hit within the first R
results, R = number of relevant gallery items; it rewards putting *all* look-alikes first.
Given colour descriptors, ``colour@4`` is the mean colour similarity (Bhattacharyya coefficient)
of the query to its first 4 results: how much the ranking keeps colour, whatever the category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KS = (1, 4, 10)
COLOUR_K = 4


@dataclass(frozen=True)
class RetrievalScores:
    """Metric name -> value, overall and for each category."""

    overall: dict[str, float]
    per_category: dict[str, dict[str, float]]


def query_scores(relevant: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Per-query metrics from ``relevant`` (Q, G) booleans in ranked order and R per query."""
    scores = {f"P@{k}": relevant[:, :k].mean(axis=1) for k in ks}
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision_at_hit = np.cumsum(relevant, axis=1) / ranks
    within_r = ranks[None, :] <= n_relevant[:, None]
    average_precision = (precision_at_hit * relevant * within_r).sum(axis=1) / np.maximum(n_relevant, 1)
    scores["mAP@R"] = average_precision
    return scores


def retrieval_scores(
    queries: np.ndarray,
    query_labels: Sequence[str],
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    ks: Sequence[int] = KS,
    colours: tuple[np.ndarray, np.ndarray] | None = None,
    leave_one_out: bool = False,
) -> RetrievalScores:
    """Rank the gallery for every query by cosine similarity and score the ranking.

    ``colours``: the (query, gallery) colour descriptors, to add ``colour@4``. ``leave_one_out``:
    the gallery *is* the queries, and each query ranks all the others (never itself): every photo
    of a set the model never trained on is a query, five times the queries of a 20 % split.
    """
    query_labels_arr, gallery_labels_arr = np.asarray(query_labels), np.asarray(gallery_labels)
    similarities = queries @ gallery.T
    if leave_one_out:
        if queries.shape != gallery.shape:
            raise ValueError("leave-one-out ranks a set against itself: queries and gallery must be the same")
        np.fill_diagonal(similarities, -np.inf)
    order = np.argsort(-similarities, axis=1, kind="stable")
    if leave_one_out:
        order = order[:, :-1]  # the query itself, ranked last
    relevant = gallery_labels_arr[order] == query_labels_arr[:, None]
    n_relevant = (gallery_labels_arr[None, :] == query_labels_arr[:, None]).sum(axis=1) - int(leave_one_out)
    per_query = query_scores(relevant, n_relevant, ks)
    if colours is not None:
        per_query[f"colour@{COLOUR_K}"] = colour_agreement(order[:, :COLOUR_K], *colours)
    overall = {name: float(values.mean()) for name, values in per_query.items()}
    per_category = {
        category: {name: float(values[query_labels_arr == category].mean()) for name, values in per_query.items()}
        for category in sorted(set(query_labels))
    }
    return RetrievalScores(overall, per_category)


def colour_agreement(top: np.ndarray, query_colours: np.ndarray, gallery_colours: np.ndarray) -> np.ndarray:
    """Per query: mean colour similarity to the gallery items at ``top`` (Q, k) indices."""
    return np.einsum("qd,qkd->qk", query_colours, gallery_colours[top]).mean(axis=1)
