"""Evaluation metrics against values worked out by hand on a tiny fixed example."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lookalike.colour import colour_histogram
from lookalike.metrics import retrieval_scores


def test_metrics_match_hand_computed_values():
    # Gallery: 3 "a" and 2 "b" on a circle; one query per category.
    angles = np.radians([0, 10, 20, 90, 100])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    queries = np.array([[np.cos(np.radians(50)), np.sin(np.radians(50))], [0.0, 1.0]])
    scores = retrieval_scores(queries, ["a", "b"], gallery, ["a", "a", "a", "b", "b"], ks=(1, 4))
    # Query "a" at 50 degrees ranks: 20(a) 10(a) 90(b) 0(a) 100(b)
    #   P@1 = 1, P@4 = 3/4, R = 3: hits at ranks 1, 2 within R -> AP = (1/1 + 2/2) / 3 = 2/3
    # Query "b" at 90 degrees ranks: 90(b) 100(b) 20(a) 10(a) 0(a)
    #   P@1 = 1, P@4 = 2/4, R = 2: AP = (1 + 1) / 2 = 1
    assert scores.per_category["a"] == pytest.approx({"P@1": 1.0, "P@4": 0.75, "mAP@R": 2 / 3})
    assert scores.per_category["b"] == pytest.approx({"P@1": 1.0, "P@4": 0.5, "mAP@R": 1.0})
    assert scores.overall == pytest.approx({"P@1": 1.0, "P@4": 0.625, "mAP@R": 5 / 6})


def test_colour_histogram_is_unit_length_and_tells_colours_apart():
    red, dark_red, blue = (
        colour_histogram(Image.new("RGB", (32, 32), c)) for c in ((220, 20, 20), (210, 25, 25), (20, 20, 220))
    )
    assert np.linalg.norm(red) == pytest.approx(1.0)
    assert red @ dark_red > red @ blue


def test_leave_one_out_ranks_each_item_against_the_others_never_itself():
    # Four items on a circle: a at 0 and 10 degrees, b at 30 and 90.
    angles = np.radians([0, 10, 30, 90])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    scores = retrieval_scores(vectors, list("aabb"), vectors, list("aabb"), ks=(1,), leave_one_out=True)
    # 0: 10(a) 30(b) 90(b) -> P@1 1, R 1, AP 1      10: 0(a) 30(b) 90(b) -> P@1 1, AP 1
    # 30: 10(a) 0(a) 90(b) -> P@1 0, R 1, AP 0      90: 30(b) 10(a) 0(a) -> P@1 1, AP 1
    assert scores.per_category["a"] == pytest.approx({"P@1": 1.0, "mAP@R": 1.0})
    assert scores.per_category["b"] == pytest.approx({"P@1": 0.5, "mAP@R": 0.5})
    with pytest.raises(ValueError, match="the same"):
        retrieval_scores(vectors, list("aabb"), vectors[:3], list("aab"), leave_one_out=True)
