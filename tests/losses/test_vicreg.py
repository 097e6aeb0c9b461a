"""VICReg as in facebookresearch/vicreg (METHODS.md §10): invariance = MSE over N×D, variance term
halved (½ per branch) with the unbiased variance and eps 1e-4 inside the root, covariance summed over
the two branches and divided by D, with (N-1) normalization.

The library computes in float32 (even for float64 inputs). Tolerances against the float64 references:
values ``rtol=1e-5, atol=1e-5``; gradients ``rtol=1e-4, atol=1e-5 · max|expected|``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import VICRegLoss, vicreg_loss

VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
SHAPES = [(2, 3), (4, 8), (8, 5), (16, 32), (33, 7)]
COEFFS = [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (3.0, 7.0, 0.5)]


def _views(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dimensions with std on both sides of 1 (so the hinge is active for some, not all)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 2.5, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    offsets = torch.randn(d, generator=g, dtype=torch.float64)
    mix = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix * scales + offsets
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    return z1, z2


def _ref_vicreg(z1: np.ndarray, z2: np.ndarray, sim: float, std: float, cov: float, eps: float = 1e-4) -> float:
    n, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance_and_covariance(z: np.ndarray) -> tuple[float, float]:
        means = [sum(z[:, j]) / n for j in range(d)]
        hinge = 0.0
        for j in range(d):
            unbiased_var = sum((z[i, j] - means[j]) ** 2 for i in range(n)) / (n - 1)
            hinge += max(0.0, 1.0 - math.sqrt(unbiased_var + eps))
        off_diagonal = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    entry = sum((z[i, a] - means[a]) * (z[i, b] - means[b]) for i in range(n)) / (n - 1)
                    off_diagonal += entry**2
        return hinge / d, off_diagonal / d

    v1, c1 = variance_and_covariance(z1)
    v2, c2 = variance_and_covariance(z2)
    return sim * invariance + std * (0.5 * v1 + 0.5 * v2) + cov * (c1 + c2)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("coeffs", COEFFS)
def test_vicreg_matches_reference(n: int, d: int, coeffs: tuple[float, float, float]) -> None:
    z1, z2 = _views(n, d, seed=n * 13 + d)
    sim, std, cov = coeffs
    expected = torch.tensor(_ref_vicreg(z1.numpy(), z2.numpy(), sim, std, cov), dtype=torch.float64)
    functional = vicreg_loss(z1, z2, sim_coeff=sim, std_coeff=std, cov_coeff=cov)
    assert functional.dim() == 0 and functional.dtype == torch.float32
    torch.testing.assert_close(functional.double(), expected, **VALUE_TOL)
    module = VICRegLoss(sim_coeff=sim, std_coeff=std, cov_coeff=cov)
    torch.testing.assert_close(module(z1, z2).double(), expected, **VALUE_TOL)
    module_local = VICRegLoss(sim_coeff=sim, std_coeff=std, cov_coeff=cov, gather_distributed=False)
    torch.testing.assert_close(module_local(z1, z2).double(), expected, **VALUE_TOL)


def test_module_defaults_follow_the_official_code() -> None:
    z1, z2 = _views(16, 12, seed=3)
    module = VICRegLoss()
    assert (module.sim_coeff, module.std_coeff, module.cov_coeff, module.eps) == (25.0, 25.0, 1.0, 1e-4)
    assert module(z1, z2).item() == pytest.approx(_ref_vicreg(z1.numpy(), z2.numpy(), 25.0, 25.0, 1.0), rel=1e-5)
    assert "sim_coeff=25.0" in repr(module)


def test_eps_is_inside_the_square_root_and_configurable() -> None:
    """Tiny variances (~1e-8): sqrt(var + eps) ≈ sqrt(eps), so the hinge measures eps directly."""
    z1, z2 = _views(8, 6, seed=1)
    z1, z2 = z1 * 1e-4, z2 * 1e-4
    for eps in (1e-4, 1e-2):
        expected = _ref_vicreg(z1.numpy(), z2.numpy(), 0.0, 1.0, 0.0, eps=eps)
        assert vicreg_loss(z1, z2, 0.0, 1.0, 0.0, eps=eps).item() == pytest.approx(expected, rel=1e-5)
        assert VICRegLoss(0.0, 1.0, 0.0, eps=eps)(z1, z2).item() == pytest.approx(expected, rel=1e-5)
    # ½·relu(1 - sqrt(eps)) per branch, averaged over D, is ≈ 1 - sqrt(eps): 0.99 for eps = 1e-4.
    assert vicreg_loss(z1, z2, 0.0, 1.0, 0.0).item() == pytest.approx(1.0 - math.sqrt(1e-4), abs=1e-5)


def _columns_with_unbiased_std(n: int, stds: list[float], seed: int) -> torch.Tensor:
    """(N, D) with zero-mean, mutually orthogonal columns whose unbiased std is exactly ``stds``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, len(stds), generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(dim=0))
    offsets = torch.randn(len(stds), generator=g, dtype=torch.float64)
    return q * math.sqrt(n - 1) * torch.tensor(stds, dtype=torch.float64) + offsets


@pytest.mark.parametrize("n", [4, 9, 32])
def test_variance_term_is_zero_when_every_std_is_at_least_one(n: int) -> None:
    d = 3
    z1 = _columns_with_unbiased_std(n, [1.0, 1.7, 3.0], seed=n)
    z2 = _columns_with_unbiased_std(n, [2.0, 1.0, 1.2], seed=n + 1)
    assert vicreg_loss(z1, z2, sim_coeff=0.0, std_coeff=25.0, cov_coeff=0.0).item() == 0.0
    # One dimension of one branch at unbiased std 0.5: ½ · relu(1 - sqrt(0.25 + 1e-4)) / D, times std_coeff.
    # (A biased variance would give std 0.5·sqrt((N-1)/N); no halving would double it; eps is visible.)
    z1_low = _columns_with_unbiased_std(n, [1.0, 0.5, 3.0], seed=n)
    expected = 25.0 * 0.5 * (1.0 - math.sqrt(0.25 + 1e-4)) / d
    for a, b in ((z1_low, z2), (z2, z1_low)):
        variance_only = vicreg_loss(a, b, sim_coeff=0.0, std_coeff=25.0, cov_coeff=0.0).item()
        assert variance_only == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n", [5, 16])
def test_covariance_is_summed_over_branches_and_divided_by_d(n: int) -> None:
    """Orthogonal columns have no covariance; duplicating a unit-variance column gives K_01 = K_10 = 1,
    i.e. Σ_{i≠j} K_ij² / D = 2/D for that branch; both branches so -> 4/D (summed, not averaged)."""
    d = 4
    white = _columns_with_unbiased_std(n, [1.0] * d, seed=n)
    no_covariance = vicreg_loss(white, white.clone(), sim_coeff=0.0, std_coeff=0.0, cov_coeff=1.0).item()
    assert no_covariance == pytest.approx(0.0, abs=1e-6)
    duplicated = white.clone()
    duplicated[:, 1] = duplicated[:, 0]
    one_branch = vicreg_loss(duplicated, white, sim_coeff=0.0, std_coeff=0.0, cov_coeff=1.0).item()
    both = vicreg_loss(duplicated, duplicated.clone(), sim_coeff=0.0, std_coeff=0.0, cov_coeff=1.0).item()
    assert one_branch == pytest.approx(2.0 / d, rel=1e-5)
    assert both == pytest.approx(4.0 / d, rel=1e-5)


def test_invariance_is_the_mse_over_all_entries() -> None:
    z1, z2 = _views(6, 10, seed=2)
    delta = 0.5
    # Shifting a whole view changes only the invariance term: + mean((z1 - z2 + δ)²) - mean((z1 - z2)²).
    base = vicreg_loss(z1, z2).item()
    shifted = vicreg_loss(z1 + delta, z2).item()
    diff = z1 - z2
    expected_change = 25.0 * (float(((diff + delta) ** 2).sum()) - float((diff**2).sum())) / diff.numel()
    assert shifted - base == pytest.approx(expected_change, rel=1e-4, abs=1e-4)
    assert vicreg_loss(z1, z1.clone(), sim_coeff=1.0, std_coeff=0.0, cov_coeff=0.0).item() == 0.0


def _expected_grad(za: torch.Tensor, zb: torch.Tensor, sim: float, std: float, cov: float, eps: float) -> torch.Tensor:
    """∂L/∂za with x = za - mean(za), s_j = sqrt(Σ_n x_nj²/(N-1) + eps), K = xᵀx/(N-1):

        2 sim (za - zb)/(N D)  -  std [s_j < 1] x_j / (2 D (N-1) s_j)  +  4 cov x K_off / (D (N-1)).

    (Both regularizer gradients are linear in x, hence have zero column mean, so the centring
    Jacobian I - 11ᵀ/N leaves them unchanged.)"""
    n, d = za.shape
    x = za - za.mean(dim=0)
    s = torch.sqrt(x.pow(2).sum(dim=0) / (n - 1) + eps)
    k = x.t() @ x / (n - 1)
    k_off = k - torch.diag(torch.diagonal(k))
    return (
        2 * sim * (za - zb) / (n * d)
        - std * (s < 1).double() * x / (2 * d * (n - 1) * s)
        + 4 * cov * x @ k_off / (d * (n - 1))
    )


@pytest.mark.parametrize("n,d", [(4, 8), (16, 12), (33, 7)])
@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_vicreg_gradient_matches_closed_form(n: int, d: int, coeffs: tuple[float, float, float]) -> None:
    z1_0, z2_0 = _views(n, d, seed=n + 7 * d)
    z1, z2 = z1_0.clone().requires_grad_(True), z2_0.clone().requires_grad_(True)
    vicreg_loss(z1, z2, *coeffs).backward()
    for actual, expected in (
        (z1.grad, _expected_grad(z1_0, z2_0, *coeffs, eps=1e-4)),
        (z2.grad, _expected_grad(z2_0, z1_0, *coeffs, eps=1e-4)),
    ):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
