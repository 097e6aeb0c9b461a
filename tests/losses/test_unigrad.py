"""UniGrad's surrogate loss (Tao et al., CVPR 2022): its gradient is exactly the prescribed
−u2m + λ F u1 (pushed through the l2 normalization), and the correlation it uses is that of the
normalized momentum projections of both views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from siamssl.losses import UniGradLoss, unigrad_correlation, unigrad_loss


def _inputs(n: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 0.3
    return [z1, z1 + torch.randn(n, d, generator=g, dtype=torch.float64), *(torch.randn(2, n, d, generator=g, dtype=torch.float64) + z1)]


@pytest.mark.parametrize("n,d", [(4, 3), (9, 16)])
@pytest.mark.parametrize("lambd", [0.0, 1.0, 100.0])
def test_gradient_is_the_unified_gradient_through_the_normalization(n: int, d: int, lambd: float) -> None:
    z1_0, z2_0, z1m, z2m = _inputs(n, d, seed=n + d)
    correlation = unigrad_correlation(z1m, z2m).double()
    z1, z2 = z1_0.clone().requires_grad_(True), z2_0.clone().requires_grad_(True)
    z1m, z2m = z1m.clone().requires_grad_(True), z2m.clone().requires_grad_(True)
    loss = unigrad_loss(z1, z2, z1m, z2m, correlation, lambd)
    loss.backward()
    assert z1m.grad is None and z2m.grad is None

    for z, other_m, grad in ((z1_0, z2m.detach(), z1.grad), (z2_0, z1m.detach(), z2.grad)):
        u, um = F.normalize(z, dim=1), F.normalize(other_m, dim=1)
        g = -um + lambd * u @ correlation
        expected = (g - (g * u).sum(dim=1, keepdim=True) * u) / (2 * n * z.norm(dim=1, keepdim=True))
        torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_value_is_the_surrogate_inner_product() -> None:
    z1, z2, z1m, z2m = (x.float() for x in _inputs(6, 5, seed=1))
    correlation = unigrad_correlation(z1m, z2m)
    u1, u2, u1m, u2m = (F.normalize(x, dim=1) for x in (z1, z2, z1m, z2m))
    expected = 0.5 * (((-u2m + 3.0 * u1 @ correlation) * u1).sum(1).mean() + ((-u1m + 3.0 * u2 @ correlation) * u2).sum(1).mean())
    torch.testing.assert_close(UniGradLoss(lambd=3.0)(z1, z2, z1m, z2m, correlation), expected)
    assert UniGradLoss().lambd == 100.0


def test_correlation_is_the_mean_outer_product_of_normalized_momentum_projections() -> None:
    _, _, z1m, z2m = _inputs(7, 4, seed=2)
    u = F.normalize(torch.cat([z1m, z2m]), dim=1)
    c = unigrad_correlation(z1m.requires_grad_(True), z2m)
    assert not c.requires_grad and c.dtype == torch.float32
    torch.testing.assert_close(c.double(), u.t() @ u / 14, rtol=1e-5, atol=1e-6)
    assert c.trace().item() == pytest.approx(1.0, abs=1e-5)  # unit rows: tr F = mean ‖u‖² = 1


def test_low_precision_inputs_give_a_float32_loss() -> None:
    z1, z2, z1m, z2m = (x.to(torch.bfloat16) for x in _inputs(6, 5, seed=3))
    correlation = unigrad_correlation(z1m, z2m)
    loss = unigrad_loss(z1, z2, z1m, z2m, correlation)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, unigrad_loss(z1.float(), z2.float(), z1m.float(), z2m.float(), correlation), rtol=0, atol=0)
