"""Barlow Twins: BN-style (biased, eps 1e-5) standardization, C = ẑ1ᵀẑ2 / N, λ = 0.0051.

The library computes in float32 (even for float64 inputs). Tolerances against the float64 references:
values ``rtol=1e-5, atol=1e-5`` (the loss is O(D)); gradients ``rtol=1e-4, atol=1e-5 · max|expected|``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import BarlowTwinsLoss, barlow_twins_loss

VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
SHAPES = [(2, 3), (4, 8), (8, 5), (16, 32), (33, 7)]


def _views(n: int, d: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated views with per-dimension offsets and scales (so centring and scaling matter)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(d, generator=g, dtype=torch.float64) * 3.0
    scales = torch.rand(d, generator=g, dtype=torch.float64) * 2.0 + 0.2
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    z1 = (base * scales + offsets) * scale
    z2 = ((base + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)) * scales.flip(0) - offsets) * scale
    return z1, z2


def _ref_standardize(z: np.ndarray, eps: float) -> np.ndarray:
    """BatchNorm1d(affine=False) in training mode, one column at a time: biased variance, eps in the root."""
    n, d = z.shape
    out = np.empty_like(z)
    for j in range(d):
        column = z[:, j]
        mean = sum(column) / n
        variance = sum((x - mean) ** 2 for x in column) / n
        out[:, j] = (column - mean) / math.sqrt(variance + eps)
    return out


def _ref_cross_correlation(z1: np.ndarray, z2: np.ndarray, eps: float) -> np.ndarray:
    a, b = _ref_standardize(z1, eps), _ref_standardize(z2, eps)
    n, d = a.shape
    c = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            c[i, j] = sum(a[k, i] * b[k, j] for k in range(n)) / n
    return c


def _ref_barlow_twins(z1: np.ndarray, z2: np.ndarray, lambd: float, eps: float) -> float:
    c = _ref_cross_correlation(z1, z2, eps)
    d = c.shape[0]
    on_diagonal = sum((1.0 - c[i, i]) ** 2 for i in range(d))
    off_diagonal = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on_diagonal + lambd * off_diagonal


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("lambd", [0.0051, 0.3])
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_barlow_twins_matches_reference(n: int, d: int, lambd: float, scale: float) -> None:
    """scale 1e-3 makes the variances ~1e-6, so eps = 1e-5 dominates the standardization and any
    other eps (or eps outside the root, or an unbiased variance) shows up."""
    z1, z2 = _views(n, d, seed=n * 31 + d, scale=scale)
    expected = torch.tensor(_ref_barlow_twins(z1.numpy(), z2.numpy(), lambd, 1e-5), dtype=torch.float64)
    functional = barlow_twins_loss(z1, z2, lambd=lambd)
    assert functional.dim() == 0 and functional.dtype == torch.float32
    torch.testing.assert_close(functional.double(), expected, **VALUE_TOL)
    torch.testing.assert_close(BarlowTwinsLoss(lambd=lambd)(z1, z2).double(), expected, **VALUE_TOL)
    torch.testing.assert_close(
        BarlowTwinsLoss(lambd=lambd, gather_distributed=False)(z1, z2).double(), expected, **VALUE_TOL
    )


def test_eps_is_used_and_configurable() -> None:
    z1, z2 = _views(8, 6, seed=5, scale=1e-3)
    for eps in (1e-5, 1e-3):
        expected = _ref_barlow_twins(z1.numpy(), z2.numpy(), 0.0051, eps)
        assert barlow_twins_loss(z1, z2, eps=eps).item() == pytest.approx(expected, rel=1e-5)
        assert BarlowTwinsLoss(eps=eps)(z1, z2).item() == pytest.approx(expected, rel=1e-5)
    # The two eps give clearly different losses at this scale, so the comparison above is informative.
    low, high = (_ref_barlow_twins(z1.numpy(), z2.numpy(), 0.0051, eps) for eps in (1e-5, 1e-3))
    assert abs(low - high) > 1.0


def test_module_defaults_follow_the_official_code() -> None:
    z1, z2 = _views(16, 12, seed=1)
    module = BarlowTwinsLoss()
    assert module.lambd == 0.0051 and module.eps == 1e-5
    expected = _ref_barlow_twins(z1.numpy(), z2.numpy(), 0.0051, 1e-5)
    assert module(z1, z2).item() == pytest.approx(expected, rel=1e-5)
    assert "lambd=0.0051" in repr(module)


def _framework_grad(zh1: torch.Tensor, zh2: torch.Tensor, c: torch.Tensor, lambd: float) -> torch.Tensor:
    """∂L/∂ẑ1 in the unified-gradient-framework form, row by row (b = sample):

        ∂L/∂ẑ1_b = 2/N [ -ẑ2_b                                        positive term
                         + λ Σ_a (ẑ2_aᵀ ẑ2_b / N) ẑ1_a                weighted sum over the batch
                         + (1 - λ) diag(C) ⊙ ẑ2_b ]                   on-diagonal correction

    Derivation: ∂L/∂C_kl = 2λ C_kl + 2 δ_kl ((1-λ) C_kk - 1) =: G_kl, and C = ẑ1ᵀẑ2/N gives
    ∂L/∂ẑ1_bk = 1/N Σ_l G_kl ẑ2_bl. The λ C part expands as Σ_l C_kl ẑ2_bl = 1/N Σ_a ẑ1_ak (ẑ2_a·ẑ2_b),
    the paper's "(ẑ2ᵀẑ2_b/N)-weighted" sum; the δ part gives -ẑ2_b + (1-λ) C_kk ẑ2_bk.
    """
    n = zh1.shape[0]
    rows = []
    for b in range(n):
        weighted = sum((zh2[a] @ zh2[b]) / n * zh1[a] for a in range(n))
        rows.append(2.0 / n * (-zh2[b] + lambd * weighted + (1.0 - lambd) * torch.diagonal(c) * zh2[b]))
    return torch.stack(rows)


def _standardization_backward(z: torch.Tensor, grad_zh: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Jacobian of ẑ = (z - μ)/σ, σ² = mean((z - μ)²) + eps, per column:

        ∂L/∂z = (g - mean_b(g) - ẑ ⊙ mean_b(g ⊙ ẑ)) / σ

    (∂σ/∂z_b = (z_b - μ)/(Nσ), and (z_b - μ)/σ = ẑ_b, so eps only enters through σ)."""
    centered = z - z.mean(dim=0)
    sigma = torch.sqrt(centered.pow(2).mean(dim=0) + eps)
    zh = centered / sigma
    return (grad_zh - grad_zh.mean(dim=0) - zh * (grad_zh * zh).mean(dim=0)) / sigma


@pytest.mark.parametrize("n,d", [(4, 3), (8, 5), (16, 12), (6, 10)])
@pytest.mark.parametrize("lambd", [0.0051, 0.5, 1.0])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_barlow_twins_gradient_matches_unified_framework(n: int, d: int, lambd: float, eps: float) -> None:
    """Autograd of the library vs. the framework gradient (:func:`_framework_grad`) pushed through
    the standardization Jacobian (:func:`_standardization_backward`), for both views (swapping the
    views transposes C, so ∂L/∂ẑ2 is the same expression with 1 ↔ 2)."""
    z1_0, z2_0 = _views(n, d, seed=n * d + int(lambd * 100))
    z1, z2 = z1_0.clone().requires_grad_(True), z2_0.clone().requires_grad_(True)
    barlow_twins_loss(z1, z2, lambd=lambd, eps=eps).backward()

    zh1 = (z1_0 - z1_0.mean(dim=0)) / torch.sqrt(z1_0.var(dim=0, unbiased=False) + eps)
    zh2 = (z2_0 - z2_0.mean(dim=0)) / torch.sqrt(z2_0.var(dim=0, unbiased=False) + eps)
    c = zh1.t() @ zh2 / n
    expected_1 = _standardization_backward(z1_0, _framework_grad(zh1, zh2, c, lambd), eps)
    expected_2 = _standardization_backward(z2_0, _framework_grad(zh2, zh1, c.t(), lambd), eps)
    for actual, expected in ((z1.grad, expected_1), (z2.grad, expected_2)):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_framework_gradient_agrees_with_matrix_form() -> None:
    """Self-check of the derivation: the row-wise framework form equals ẑ2 Gᵀ / N."""
    g = torch.Generator().manual_seed(0)
    zh1 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    zh2 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    c = zh1.t() @ zh2 / 7
    lambd = 0.3
    grad_c = 2 * lambd * c + torch.diag(2 * ((1 - lambd) * torch.diagonal(c) - 1))
    torch.testing.assert_close(_framework_grad(zh1, zh2, c, lambd), zh2 @ grad_c.t() / 7, rtol=1e-12, atol=1e-12)


def _whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """(N, D), D ≤ N-1: zero-mean columns, orthogonal, each with biased variance exactly 1."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(dim=0))  # columns orthonormal and ⟂ 1
    return q * math.sqrt(n)


@pytest.mark.parametrize("n,d", [(8, 4), (32, 16), (5, 4)])
def test_zero_loss_when_cross_correlation_is_identity(n: int, d: int) -> None:
    """z1 = z2 whitened: C = I/(1 + eps) exactly, L = D (eps/(1+eps))² ≈ D·1e-10; with eps = 0, C = I."""
    z = _whitened(n, d, seed=n + d)
    shift = torch.randn(d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(
        torch.from_numpy(_ref_cross_correlation(z.numpy(), z.numpy(), 0.0)), torch.eye(d, dtype=torch.float64)
    )
    assert barlow_twins_loss(z, z + shift).item() == pytest.approx(d * (1e-5 / (1 + 1e-5)) ** 2, abs=1e-8)
    assert barlow_twins_loss(z, z.clone(), eps=0.0).item() < 1e-9
    # Any departure from C = I costs: another whitened view with a rotated basis gives C = R ≠ I.
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert barlow_twins_loss(z, z @ rotation).item() > 1e-3


@pytest.mark.parametrize("n,d", [(8, 5), (16, 32)])
def test_loss_is_a_weighted_distance_of_c_to_identity(n: int, d: int) -> None:
    """L = 0 iff C = I: with λ = 1, L = ||C - I||²_F; for λ ∈ (0, 1], λ||C-I||² ≤ L ≤ ||C-I||²."""
    z1, z2 = _views(n, d, seed=3 * n + d)
    c = _ref_cross_correlation(z1.numpy(), z2.numpy(), 1e-5)
    distance = float(np.sum((c - np.eye(d)) ** 2))
    assert barlow_twins_loss(z1, z2, lambd=1.0).item() == pytest.approx(distance, rel=1e-5)
    lambd = 0.0051
    loss = barlow_twins_loss(z1, z2, lambd=lambd).item()
    assert lambd * distance * (1 - 1e-5) <= loss <= distance * (1 + 1e-5)


@pytest.mark.parametrize("n,d", [(4, 8), (16, 32), (33, 7)])
def test_swapping_views_leaves_the_loss_unchanged(n: int, d: int) -> None:
    z1, z2 = _views(n, d, seed=n - d + 100)
    torch.testing.assert_close(barlow_twins_loss(z1, z2), barlow_twins_loss(z2, z1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(BarlowTwinsLoss()(z1, z2), BarlowTwinsLoss()(z2, z1), rtol=1e-6, atol=1e-6)
    # Not a tautology: the loss does depend on which view is paired with which sample.
    assert abs(barlow_twins_loss(z1, z2.flip(0)).item() - barlow_twins_loss(z1, z2).item()) > 1e-2


def test_per_dimension_offsets_do_not_matter() -> None:
    z1, z2 = _views(12, 6, seed=4)
    g = torch.Generator().manual_seed(2)
    moved = barlow_twins_loss(z1 + 10 * torch.randn(6, generator=g, dtype=torch.float64), z2 - 3.0)
    torch.testing.assert_close(moved, barlow_twins_loss(z1, z2), rtol=1e-5, atol=1e-5)
