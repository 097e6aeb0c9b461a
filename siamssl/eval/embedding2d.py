"""2-D embeddings of feature matrices for pictures: PCA and a small exact t-SNE (no sklearn).

t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008): input affinities
p_{j|i} ∝ exp(−β_i‖x_i − x_j‖²) with β_i set by bisection so that each row's perplexity
2^{H(P_i)} is the target, symmetrized p_ij = (p_{j|i} + p_{i|j})/2N; output affinities
q_ij ∝ (1 + ‖y_i − y_j‖²)⁻¹; gradient descent on KL(P‖Q) with early exaggeration, momentum and
per-coordinate gains (the schedule of the reference implementation), from a PCA initialization
scaled to std 1e-4 (Kobak & Linderman, Nat. Biotechnol. 2021) so the result is deterministic.
The exact O(N²) form suits the few thousand points of a report picture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def pca_2d(x: Tensor, dims: int = 2) -> Tensor:
    """Projection of the centered rows of ``x`` (N, D) on their ``dims`` leading principal axes."""
    x = x.double()
    centered = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return (centered @ v[:dims].t()).float()


def _squared_distances(x: Tensor) -> Tensor:
    norms = (x * x).sum(dim=1)
    return (norms[:, None] + norms[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)


def conditional_affinities(x: Tensor, perplexity: float, tolerance: float = 1e-5, max_iterations: int = 100) -> Tensor:
    """Row-stochastic P (N, N), p_{j|i} ∝ exp(−β_i d²_ij), p_{i|i} = 0, with each row's perplexity
    exp(H_i) (entropy in nats) equal to ``perplexity`` (bisection on β_i, all rows at once)."""
    n = x.shape[0]
    if not 1.0 <= perplexity < n:
        raise ValueError(f"perplexity must be in [1, {n}) for {n} points, got {perplexity}")
    distances = _squared_distances(x.double())
    distances.fill_diagonal_(float("inf"))
    target = math.log(perplexity)
    beta = torch.ones(n, dtype=torch.float64)
    low = torch.zeros(n, dtype=torch.float64)
    high = torch.full((n,), float("inf"), dtype=torch.float64)
    for _ in range(max_iterations):
        logits = -distances * beta[:, None]
        logits = logits - logits.max(dim=1, keepdim=True).values
        p = logits.exp()
        p = p / p.sum(dim=1, keepdim=True)
        entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)
        error = entropy - target
        if float(error.abs().max()) < tolerance:
            break
        too_flat = error > 0  # entropy too high: sharpen (raise β)
        low = torch.where(too_flat, beta, low)
        high = torch.where(too_flat, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2.0, (low + high) / 2.0)
    return p


def tsne(
    x: Tensor,
    perplexity: float = 30.0,
    iterations: int = 750,
    exaggeration: float = 12.0,
    exaggeration_iterations: int = 250,
    learning_rate: float | None = None,
    pca_dims: int = 50,
) -> Tensor:
    """Exact t-SNE of the rows of ``x`` (N, D) into 2-D; returns (N, 2) float32.

    ``learning_rate`` defaults to max(N / exaggeration / 4, 50) (Belkina et al., Nat. Commun. 2019);
    inputs wider than ``pca_dims`` are first reduced by PCA, as in the reference implementation."""
    x = x.double()
    n = x.shape[0]
    if n < 3:
        raise ValueError("t-SNE needs at least 3 points")
    perplexity = min(perplexity, (n - 1) / 3.0)
    if x.shape[1] > pca_dims:
        x = pca_2d(x, pca_dims).double()
    p = conditional_affinities(x, perplexity)
    p = (p + p.t()) / (2.0 * n)
    p = p.clamp_min(1e-12)
    y = pca_2d(x).double()
    y = y / y[:, 0].std().clamp_min(1e-12) * 1e-4
    lr = learning_rate if learning_rate is not None else max(n / exaggeration / 4.0, 50.0)
    velocity = torch.zeros_like(y)
    gains = torch.ones_like(y)
    for iteration in range(iterations):
        early = iteration < exaggeration_iterations
        attraction = p * exaggeration if early else p
        kernel = 1.0 / (1.0 + _squared_distances(y))
        kernel.fill_diagonal_(0.0)
        q = (kernel / kernel.sum()).clamp_min(1e-12)
        weights = (attraction - q) * kernel
        gradient = 4.0 * (weights.sum(dim=1, keepdim=True) * y - weights @ y)
        same_sign = (gradient > 0) == (velocity > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
        momentum = 0.5 if early else 0.8
        velocity = momentum * velocity - lr * gains * gradient
        y = y + velocity
        y = y - y.mean(dim=0, keepdim=True)
    return y.float()
