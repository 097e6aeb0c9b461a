"""SimSiam's negative cosine similarity and BYOL's normalized regression loss.

The library computes in float32 (even for float64 inputs), so every comparison with the float64
reference below uses float32-level tolerances: values ``rtol=1e-5, atol=1e-6``, gradients
``rtol=1e-4, atol=1e-6 · max|reference gradient|``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import NegativeCosineLoss, NormalizedMSELoss, negative_cosine_similarity, normalized_mse

SHAPES = [(1, 3), (4, 8), (8, 5), (16, 32), (33, 7)]
VALUE_TOL = dict(rtol=1e-5, atol=1e-6)


def _pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, d, generator=g, dtype=torch.float64) * 3.0 + 0.5
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.2 - 0.1
    return p, z


def _ref_negative_cosine(p: np.ndarray, z: np.ndarray) -> float:
    """-1/N Σ_i <p_i, z_i> / (|p_i| |z_i|), one row at a time with explicit sums."""
    total = 0.0
    for i in range(p.shape[0]):
        dot = sum(float(a) * float(b) for a, b in zip(p[i], z[i]))
        norm_p = math.sqrt(sum(float(a) ** 2 for a in p[i]))
        norm_z = math.sqrt(sum(float(b) ** 2 for b in z[i]))
        total += dot / (norm_p * norm_z)
    return -total / p.shape[0]


def _ref_normalized_mse(p: np.ndarray, z: np.ndarray) -> float:
    """BYOL's form 1/N Σ_i || p_i/|p_i| - z_i/|z_i| ||² (squared distance, not 2 - 2cos)."""
    total = 0.0
    for i in range(p.shape[0]):
        a = p[i] / np.sqrt(np.sum(p[i] ** 2))
        b = z[i] / np.sqrt(np.sum(z[i] ** 2))
        total += float(np.sum((a - b) ** 2))
    return total / p.shape[0]


def _ref_cosine_grad(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂/∂x_i of -1/N Σ_i cos(x_i, y_i) = -1/(N |x_i|) (I - x̂_i x̂_iᵀ) ŷ_i."""
    n = x.shape[0]
    xh = x / x.norm(dim=1, keepdim=True)
    yh = y / y.norm(dim=1, keepdim=True)
    along = (xh * yh).sum(dim=1, keepdim=True)
    return -(yh - along * xh) / (n * x.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_negative_cosine_matches_reference(n: int, d: int, stop_gradient: bool) -> None:
    p, z = _pair(n, d, seed=n * 100 + d)
    expected = _ref_negative_cosine(p.numpy(), z.numpy())
    functional = negative_cosine_similarity(p, z, stop_gradient=stop_gradient)
    module = NegativeCosineLoss(stop_gradient=stop_gradient)(p, z)
    assert functional.dim() == 0 and module.dim() == 0
    torch.testing.assert_close(functional.double(), torch.tensor(expected, dtype=torch.float64), **VALUE_TOL)
    torch.testing.assert_close(module.double(), torch.tensor(expected, dtype=torch.float64), **VALUE_TOL)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_normalized_mse_matches_reference(n: int, d: int, stop_gradient: bool) -> None:
    p, z = _pair(n, d, seed=n * 100 + d + 1)
    expected = torch.tensor(_ref_normalized_mse(p.numpy(), z.numpy()), dtype=torch.float64)
    torch.testing.assert_close(normalized_mse(p, z, stop_gradient=stop_gradient).double(), expected, **VALUE_TOL)
    torch.testing.assert_close(NormalizedMSELoss(stop_gradient=stop_gradient)(p, z).double(), expected, **VALUE_TOL)


@pytest.mark.parametrize("n,d", [(4, 8), (16, 32)])
def test_stop_gradient_blocks_target_and_keeps_prediction_gradient(n: int, d: int) -> None:
    p0, z0 = _pair(n, d, seed=7)
    for loss_fn, factor in ((negative_cosine_similarity, 1.0), (normalized_mse, 2.0)):
        p = p0.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(True)
        loss = loss_fn(p, z, stop_gradient=True)
        grad_p, grad_z = torch.autograd.grad(loss, [p, z], allow_unused=True)
        assert grad_z is None, f"{loss_fn.__name__}: the gradient reached z through the stop-gradient"
        expected = factor * _ref_cosine_grad(p0, z0)
        torch.testing.assert_close(grad_p, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())

        # The module form honours the flag the same way.
        module = NegativeCosineLoss() if loss_fn is negative_cosine_similarity else NormalizedMSELoss()
        p.grad = z.grad = None
        module(p, z).backward()
        assert z.grad is None
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("n,d", [(4, 8), (16, 32)])
def test_without_stop_gradient_target_gets_the_symmetric_gradient(n: int, d: int) -> None:
    p0, z0 = _pair(n, d, seed=11)
    for loss_fn, module_cls, factor in (
        (negative_cosine_similarity, NegativeCosineLoss, 1.0),
        (normalized_mse, NormalizedMSELoss, 2.0),
    ):
        for form in ("functional", "module"):
            p = p0.clone().requires_grad_(True)
            z = z0.clone().requires_grad_(True)
            loss = loss_fn(p, z, stop_gradient=False) if form == "functional" else module_cls(stop_gradient=False)(p, z)
            loss.backward()
            expected_p = factor * _ref_cosine_grad(p0, z0)
            expected_z = factor * _ref_cosine_grad(z0, p0)
            torch.testing.assert_close(p.grad, expected_p, rtol=1e-4, atol=1e-6 * expected_p.abs().max().item())
            torch.testing.assert_close(z.grad, expected_z, rtol=1e-4, atol=1e-6 * expected_z.abs().max().item())


def test_stop_gradient_through_a_shared_parameter() -> None:
    """SimSiam: p and z come from the same weights; with stop-gradient only the p path contributes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w_pred = torch.randn(4, 4, generator=g, dtype=torch.float64)

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        z = x @ w
        return z @ w_pred, z

    (grad_sg,) = torch.autograd.grad(negative_cosine_similarity(*forward(), stop_gradient=True), [w])
    (grad_full,) = torch.autograd.grad(negative_cosine_similarity(*forward(), stop_gradient=False), [w])
    p, z = forward()
    # Closed form of the stop-gradient path: dL/dW = xᵀ (dL/dp) W_predᵀ.
    expected_sg = x.t() @ _ref_cosine_grad(p.detach(), z.detach()) @ w_pred.t()
    torch.testing.assert_close(grad_sg, expected_sg, rtol=1e-4, atol=1e-6 * expected_sg.abs().max().item())
    expected_full = expected_sg + x.t() @ _ref_cosine_grad(z.detach(), p.detach())
    torch.testing.assert_close(grad_full, expected_full, rtol=1e-4, atol=1e-6 * expected_full.abs().max().item())
    assert (grad_full - grad_sg).abs().max() > 1e-3  # the z path is not negligible here


@pytest.mark.parametrize("n,d", [(1, 3), (8, 16)])
def test_aligned_and_opposite_predictions(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(n + d)
    z = torch.randn(n, d, generator=g)
    scale = torch.rand(n, 1, generator=g) * 10 + 0.1  # positive per-row rescaling keeps the direction
    assert negative_cosine_similarity(z, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_cosine_similarity(scale * z, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert NegativeCosineLoss()(z, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_cosine_similarity(-scale * z, z).item() == pytest.approx(1.0, abs=1e-6)
    assert normalized_mse(scale * z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_mse(-z, z).item() == pytest.approx(4.0, abs=1e-5)


def test_orthogonal_prediction_gives_zero_cosine() -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(5)))
    p, z = q[:, :3].t().contiguous(), q[:, 3:].t().contiguous()  # rows of p ⟂ rows of z
    assert negative_cosine_similarity(p, z).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_mse(p, z).item() == pytest.approx(2.0, abs=1e-6)


def test_normalized_mse_degenerate_prediction_follows_byol_safe_norm() -> None:
    p = torch.zeros(1, 4)
    z = torch.tensor([[3.0, 0.0, 4.0, 0.0]])
    # BYOL: normed p = 0, normed z = z/5 -> ||0 - z/5||² = 1.
    assert normalized_mse(p, z).item() == pytest.approx(1.0, abs=1e-6)


def test_modules_expose_the_flag() -> None:
    assert NegativeCosineLoss().stop_gradient is True
    assert NormalizedMSELoss().stop_gradient is True
    assert "stop_gradient=False" in repr(NegativeCosineLoss(stop_gradient=False))
