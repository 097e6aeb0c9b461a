"""InvaSpread's loss: a float64 loop over anchors of the official BatchCriterion's formula, its
closed forms (collapse; identical views of orthogonal instances), the code's detached candidates,
and the direction of the gradient (positives pulled in, negatives pushed out).

The library computes in float32; values are compared with ``rtol=1e-5, atol=1e-5`` and gradients
with ``rtol=1e-4, atol=1e-5`` against float64 references.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from siamssl.losses import InvariantSpreadingLoss, invariant_spreading_loss


def _views(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5 - 0.2
    z2 = (z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)) * 2.0
    return z1, z2


def _reference(z1: np.ndarray, z2: np.ndarray, tau: float, m: float) -> float:
    """The official ``BatchCriterion`` written anchor by anchor: x = [z1; z2] normalized, positive
    of anchor a = its other view, P(a, c) = exp(x_a·x_c/τ) / (exp(x_a·x_a⁺/τ) + m Σ_negatives exp(...)),
    loss = −1/(2N) Σ_a [log P(a, a⁺) + m Σ_{c ∉ {a, a⁺}} log(1 − P(a, c))]."""
    x = np.concatenate([z1, z2])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n2 = x.shape[0]
    total = 0.0
    for a in range(n2):
        positive = (a + n2 // 2) % n2
        negatives = [c for c in range(n2) if c not in (a, positive)]
        denominator = math.exp(float(x[a] @ x[positive]) / tau) + m * sum(math.exp(float(x[a] @ x[c]) / tau) for c in negatives)
        total += math.log(math.exp(float(x[a] @ x[positive]) / tau) / denominator)
        total += m * sum(math.log(1.0 - math.exp(float(x[a] @ x[c]) / tau) / denominator) for c in negatives)
    return -total / n2


@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (16, 32)])
@pytest.mark.parametrize("tau,m", [(0.1, 1.0), (0.5, 1.0), (0.2, 3.0)])
def test_matches_the_float64_reference(n, d, tau, m):
    z1, z2 = _views(n, d, seed=n * 31 + d)
    expected = _reference(z1.numpy(), z2.numpy(), tau, m)
    value = invariant_spreading_loss(z1, z2, tau, negative_weight=m)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(InvariantSpreadingLoss(tau, m)(z1, z2), value)


def test_gradient_flows_through_the_anchors_only_as_in_the_official_code():
    """The code detaches the candidates (``x.t().data``): the gradient is that of the loss where each
    inner product x_a·x_c differentiates x_a only. Reference: float64 autograd of that surrogate."""
    z1, z2 = _views(6, 5, seed=3)
    a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    invariant_spreading_loss(a1, a2, 0.2).backward()

    r1, r2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    x = F.normalize(torch.cat([r1, r2]), dim=1)
    logits = x @ x.detach().t() / 0.2
    n2 = x.shape[0]
    positive = (torch.arange(n2) + n2 // 2) % n2
    mask = torch.ones(n2, n2, dtype=torch.bool)
    mask[torch.arange(n2), torch.arange(n2)] = False
    denominator = (logits.exp() * mask).sum(dim=1)
    p = logits.exp() / denominator[:, None]
    negatives = mask.clone()
    negatives[torch.arange(n2), positive] = False
    loss = -(p[torch.arange(n2), positive].log() + (torch.log1p(-p) * negatives).sum(dim=1)).mean()
    loss.backward()
    torch.testing.assert_close(a1.grad.double(), r1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a2.grad.double(), r2.grad, rtol=1e-4, atol=1e-5)

    b1, b2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    invariant_spreading_loss(b1, b2, 0.2, stop_gradient_candidates=False).backward()
    assert (b1.grad.double() - r1.grad).abs().max() > 1e-3  # the full gradient is a different one


@pytest.mark.parametrize("n,tau", [(4, 0.1), (9, 0.5)])
def test_closed_form_at_collapse(n, tau):
    """All embeddings equal: P = 1/(2N−1) for every candidate, so
    L = log(2N−1) − (2N−2) log((2N−2)/(2N−1))."""
    z = torch.ones(n, 7, dtype=torch.float64)
    expected = math.log(2 * n - 1) - (2 * n - 2) * math.log((2 * n - 2) / (2 * n - 1))
    torch.testing.assert_close(invariant_spreading_loss(z, z, tau).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,tau", [(3, 0.1), (8, 0.3)])
def test_closed_form_for_identical_views_of_orthogonal_instances(n, tau):
    """Views identical, instances orthonormal: s⁺ = 1/τ, s⁻ = 0, so with E = e^{1/τ} and 2N−2 negatives
    L = −log(E / (E + 2N−2)) − (2N−2) log(1 − 1/(E + 2N−2)), the optimum of the finite-τ loss at this N."""
    z = torch.eye(n, 2 * n, dtype=torch.float64)
    big = math.exp(1.0 / tau)
    negatives = 2 * n - 2
    expected = -math.log(big / (big + negatives)) - negatives * math.log(1.0 - 1.0 / (big + negatives))
    torch.testing.assert_close(invariant_spreading_loss(z, z, tau).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_a_gradient_step_pulls_positives_together_and_pushes_negatives_apart():
    z1, z2 = (F.normalize(z, dim=1).float().requires_grad_(True) for z in _views(8, 16, seed=5))

    def similarities(a, b):
        x = F.normalize(torch.cat([a, b]), dim=1)
        cos = x @ x.t()
        n = a.shape[0]
        positive = torch.cat([torch.diagonal(cos, n), torch.diagonal(cos, -n)]).mean()
        mask = torch.ones_like(cos, dtype=torch.bool)
        mask.fill_diagonal_(False)
        mask[torch.arange(2 * n), (torch.arange(2 * n) + n) % (2 * n)] = False
        return positive, cos[mask].mean()

    before = similarities(z1.detach(), z2.detach())
    invariant_spreading_loss(z1, z2, 0.1).backward()
    with torch.no_grad():
        after = similarities(z1 - z1.grad, z2 - z2.grad)  # the loss is a mean over 2N anchors: small gradients
    assert after[0] > before[0] + 1e-3, (before, after)  # positives closer
    assert after[1] < before[1] - 1e-3, (before, after)  # negatives further apart


def test_bad_inputs_fail_with_one_line():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        invariant_spreading_loss(z, torch.randn(5, 3))
    with pytest.raises(ValueError, match="> 0"):
        invariant_spreading_loss(z, z, temperature=0.0)
