"""Partial PCA-whitening of the trunk's features, fitted on the training photos after training.

Why (issue 18): a class loss concentrates the trunk's variance in the few directions that separate
the training categories, and a cosine over those features is dominated by them. Flattening the
spectrum (each principal direction scaled by its eigenvalue to the power ``-power``; ``power`` 0.5
would be full whitening) gives the weaker directions, which tell new categories and items of one
category apart, their say back. Keeping the ``dim`` strongest directions gives the tower back a
projection of the same shape as the one the class loss trained, so the saved model is still a
plain open_clip model, and the stored vectors are that small.

The second moment is decomposed, not the covariance: no mean is subtracted, so the map is linear
(no bias, as open_clip's projection) and the head can be carried through its pseudo-inverse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from lookalike.checkpoint import ClassifierHead

#: Added to every eigenvalue, as a share of their mean: the weakest directions (noise) are not
#: blown up. Chosen with the power on issue 18's validation categories (README).
SHRINK = 0.03


@dataclass(frozen=True)
class Whitening:
    """``features @ matrix`` ranks; ``stored @ inverse`` maps a stored vector back into the trunk's
    space (its ``dim`` strongest directions), where the class head's projection applies."""

    directions: np.ndarray  # (features, dim), orthonormal, strongest first
    scales: np.ndarray  # (dim,) shrunk eigenvalue ** -power

    @property
    def matrix(self) -> np.ndarray:
        return (self.directions * self.scales).astype(np.float32)

    @property
    def inverse(self) -> np.ndarray:
        return (self.directions / self.scales).T.astype(np.float32)


def fit_whitening(features: np.ndarray, dim: int, power: float, shrink: float = SHRINK) -> Whitening:
    """The partial whitening of ``features`` (N, F) onto its ``dim`` strongest directions."""
    if not 0 < dim <= features.shape[1]:
        raise ValueError(f"cannot keep {dim} of {features.shape[1]} feature directions")
    features = features.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(features.T @ features / len(features))
    strongest = np.argsort(eigenvalues)[::-1][:dim]
    shrunk = np.maximum(eigenvalues, 0.0) + shrink * max(float(eigenvalues.mean()), 1e-12)
    return Whitening(eigenvectors[:, strongest], shrunk[strongest] ** -power)


def replace_projection(visual: torch.nn.Module, head: ClassifierHead, whitening: Whitening) -> ClassifierHead:
    """Put ``whitening`` in place of ``visual``'s linear projection (in place; the same shape, so the
    model config stays as it is) and return ``head`` classifying through the projection it replaced,
    applied to a stored vector mapped back by the whitening's inverse."""
    projection = visual.head.proj.weight.detach().float().clone()  # a copy: the weight is overwritten next
    with torch.no_grad():
        visual.head.proj.weight.copy_(torch.from_numpy(whitening.matrix.T))
    return dataclasses.replace(head, projection=projection.cpu() @ torch.from_numpy(whitening.inverse).T)
