"""The partial whitening fitted on a trunk's features (issue 18): what it keeps, and why it ranks better."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from finetune.whitening import fit_whitening, replace_projection
from lookalike.checkpoint import ClassifierHead
from lookalike.metrics import retrieval_scores


def features_with_a_loud_nuisance(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Four classes told apart in 8 quiet directions, drowned by 2 loud directions that vary at
    random: a cosine over the raw features ranks by the noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 25)
    centres = rng.normal(size=(4, 8))
    quiet = centres[labels] + 0.3 * rng.normal(size=(100, 8))
    loud = 10 * rng.normal(size=(100, 2))
    positive = np.hstack([loud, quiet]) + 30.0  # non-negative, as pooled ReLU features are
    return positive, [str(label) for label in labels]


def p_at_4(vectors: np.ndarray, labels: list[str]) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return retrieval_scores(unit, labels, unit, labels, leave_one_out=True).overall["P@4"]


def test_whitening_flattens_the_spectrum_by_its_power_and_keeps_the_strongest_directions():
    features, _ = features_with_a_loud_nuisance()
    moment = np.linalg.eigvalsh(features.T @ features / len(features))[::-1]
    whitening = fit_whitening(features, dim=6, power=0.25, shrink=0.0)
    whitened = features @ whitening.matrix
    assert whitened.shape == (100, 6)
    out = np.linalg.eigvalsh(whitened.T @ whitened / len(whitened))[::-1]
    np.testing.assert_allclose(out, moment[:6] ** 0.5, rtol=1e-6)  # lambda ** (1 - 2 * power)
    # the inverse maps a whitened vector back onto the 6 strongest directions of the features
    directions = whitening.directions
    np.testing.assert_allclose(whitened @ whitening.inverse, features @ directions @ directions.T, atol=1e-3)
    assert fit_whitening(features, dim=10, power=0.0).matrix @ fit_whitening(features, dim=10, power=0.0).inverse == (
        pytest.approx(np.eye(10), abs=1e-5)
    )


def test_whitening_gives_quiet_directions_their_say_back():
    features, labels = features_with_a_loud_nuisance()
    raw = p_at_4(features, labels)
    whitened = p_at_4(features @ fit_whitening(features, dim=10, power=0.5, shrink=0.0).matrix, labels)
    partial = p_at_4(features @ fit_whitening(features, dim=10, power=0.25, shrink=0.0).matrix, labels)
    assert raw < 0.4 and raw + 0.2 < partial < whitened and whitened > 0.85
    # shrinking every eigenvalue by a share of their mean holds the quiet directions back again
    shrunk = p_at_4(features @ fit_whitening(features, dim=10, power=0.5, shrink=0.1).matrix, labels)
    assert shrunk < whitened - 0.3


def test_whitening_refuses_more_directions_than_features():
    with pytest.raises(ValueError, match="cannot keep 11 of 10"):
        fit_whitening(np.ones((5, 10)), dim=11, power=0.2)


def test_the_whitening_replaces_the_projection_and_the_head_keeps_classifying_through_it():
    """Features in a 4-d subspace of 8, so the 4 kept directions lose nothing: a stored vector
    mapped by the head's projection lands where the class projection put the features."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(8, 4)))[0]
    features = (rng.normal(size=(50, 4)) @ basis.T).astype(np.float32)
    visual = torch.nn.Module()
    visual.head = torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(8, 4, bias=False)))
    class_projection = visual.head.proj.weight.detach().clone().numpy()
    whitening = fit_whitening(features, dim=4, power=0.3)

    head = replace_projection(visual, ClassifierHead(torch.zeros(3, 4), 16.0, ["a", "b", "c"]), whitening)
    with torch.no_grad():
        stored = visual.head(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(stored, features @ whitening.matrix, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored @ head.projection.numpy().T, features @ class_projection.T, atol=1e-4)
