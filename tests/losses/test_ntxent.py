"""NT-Xent (SimCLR): mean over the 2N anchors, one positive and 2(N-1) negatives each.

The library computes in float32 (even for float64 inputs). Tolerances against the float64 references:
values ``rtol=1e-5, atol=1e-5``; gradients ``rtol=1e-4, atol=1e-6 · 1/(Nτ min|z|)`` (the scale of the
individual positive/negative terms, which nearly cancel at low τ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import NTXentLoss, nt_xent

VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
SHAPES = [(1, 4), (2, 3), (4, 8), (8, 5), (16, 32), (13, 64)]


def _views(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5 - 0.2
    z2 = (z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)) * (
        torch.rand(n, 1, generator=g, dtype=torch.float64) * 3 + 0.2
    )
    return z1, z2


def _ref_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """The paper's indexing: the 2N augmented samples interleaved as (x̃_{2k-1}, x̃_{2k}) (0-based:
    2k and 2k+1, so the positive of anchor a is a XOR 1), and

        ℓ(a) = -log( exp(sim(a, pos(a))/τ) / Σ_{b ≠ a} exp(sim(a, b)/τ) ),   L = 1/(2N) Σ_a ℓ(a).
    """
    n = z1.shape[0]
    samples = []
    for k in range(n):
        samples.append(z1[k])
        samples.append(z2[k])
    total = 0.0
    for a in range(2 * n):
        sims = {}
        for b in range(2 * n):
            if b != a:
                dot = float(np.dot(samples[a], samples[b]))
                norms = math.sqrt(float(np.dot(samples[a], samples[a])) * float(np.dot(samples[b], samples[b])))
                sims[b] = dot / norms / tau
        assert len(sims) == 2 * n - 1  # 1 positive + 2(N-1) negatives
        top = max(sims.values())
        log_denominator = top + math.log(sum(math.exp(s - top) for s in sims.values()))
        total += log_denominator - sims[a ^ 1]
    return total / (2 * n)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(n: int, d: int, tau: float) -> None:
    z1, z2 = _views(n, d, seed=17 * n + d)
    expected = torch.tensor(_ref_nt_xent(z1.numpy(), z2.numpy(), tau), dtype=torch.float64)
    functional = nt_xent(z1, z2, temperature=tau)
    assert functional.dim() == 0 and functional.dtype == torch.float32
    torch.testing.assert_close(functional.double(), expected, **VALUE_TOL)
    torch.testing.assert_close(NTXentLoss(temperature=tau)(z1, z2).double(), expected, **VALUE_TOL)
    torch.testing.assert_close(
        NTXentLoss(temperature=tau, gather_distributed=False)(z1, z2).double(), expected, **VALUE_TOL
    )


def test_module_default_temperature_is_the_cifar_recipe() -> None:
    z1, z2 = _views(8, 16, seed=2)
    assert NTXentLoss().temperature == 0.5
    assert NTXentLoss()(z1, z2).item() == pytest.approx(_ref_nt_xent(z1.numpy(), z2.numpy(), 0.5), rel=1e-5)
    assert "temperature=0.5" in repr(NTXentLoss())


def _expected_grad(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """∂L/∂z for z = [z1; z2] (2N rows), from the unified gradient framework.

    Let h = [h1; h2] (l2-normalized, 2N rows), P(c) the positive of row c (c ± N, an involution),
    and S_cb = softmax_{b ≠ c}(h_c·h_b/τ) with S_cc = 0. Row c enters the loss as an anchor and as
    a candidate of every other anchor, so

        ∂L/∂h_c = 1/(2Nτ) [ (-h_P(c) + Σ_b S_cb h_b)          anchor: positive + weighted negatives
                           + (-h_P(c) + Σ_a S_ac h_a) ]        candidate: the same structure with the
                                                                 weights other anchors put on c
                = 1/(2Nτ) [ -2 h_P(c) + Σ_b (S_cb + S_bc) h_b ],

    the UniGrad form "-u2 + λ Σ s_v v" (the second half is the candidate contribution). Then
    ∂L/∂z_c = (I - h_c h_cᵀ) ∂L/∂h_c / |z_c|.
    """
    z = torch.cat([z1, z2], dim=0)
    n2 = z.shape[0]
    n = n2 // 2
    h = z / z.norm(dim=1, keepdim=True)
    positive = torch.cat([h[n:], h[:n]], dim=0)
    logits = h @ h.t() / tau
    logits.fill_diagonal_(float("-inf"))
    s = torch.softmax(logits, dim=1)
    grad_h = (-2.0 * positive + (s + s.t()) @ h) / (n2 * tau)
    return (grad_h - (grad_h * h).sum(dim=1, keepdim=True) * h) / z.norm(dim=1, keepdim=True)


def _grad_tol(n: int, tau: float, z: torch.Tensor) -> dict[str, float]:
    return dict(rtol=1e-4, atol=1e-6 / (n * tau * z.norm(dim=1).min().item()))


@pytest.mark.parametrize("n,d", [(2, 3), (4, 8), (16, 32), (13, 64)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_gradient_with_target_view_stopped(n: int, d: int, tau: float) -> None:
    """The second view detached (a stopped/momentum target): z1 receives exactly the rows of
    :func:`_expected_grad` for view 1 (anchor term + candidate term, see there); z2 receives none."""
    z1_0, z2_0 = _views(n, d, seed=n * d + 3)
    z1, z2 = z1_0.clone().requires_grad_(True), z2_0.clone().requires_grad_(True)
    grad_z1, grad_z2 = torch.autograd.grad(nt_xent(z1, z2.detach(), temperature=tau), [z1, z2], allow_unused=True)
    assert grad_z2 is None
    expected = _expected_grad(z1_0, z2_0, tau)[:n]
    torch.testing.assert_close(grad_z1, expected, **_grad_tol(n, tau, z1_0))


@pytest.mark.parametrize("n,d", [(4, 8), (16, 32)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_gradient_both_views(n: int, d: int, tau: float) -> None:
    """No stop-gradient anywhere (SimCLR): both views get the framework gradient."""
    z1_0, z2_0 = _views(n, d, seed=n + d + 99)
    z1, z2 = z1_0.clone().requires_grad_(True), z2_0.clone().requires_grad_(True)
    NTXentLoss(temperature=tau)(z1, z2).backward()
    expected = _expected_grad(z1_0, z2_0, tau)
    tol = _grad_tol(n, tau, torch.cat([z1_0, z2_0]))
    torch.testing.assert_close(z1.grad, expected[:n], **tol)
    torch.testing.assert_close(z2.grad, expected[n:], **tol)


@pytest.mark.parametrize("n,d", [(2, 4), (5, 5), (6, 16)])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_identical_orthonormal_views_have_known_value(n: int, d: int, tau: float) -> None:
    """z1 = z2 with orthonormal rows: each anchor has positive logit 1/τ and 2(N-1) negatives at
    logit 0 (its self-similarity 1/τ excluded), so L = log(1 + 2(N-1) e^{-1/τ}). Including the self
    term would give log(2 + ...), a 1-positive/2N-1-negative count would give another value."""
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(n * d), dtype=torch.float64))
    z = basis.t()[:n] * 4.0
    expected = math.log1p(2 * (n - 1) * math.exp(-1.0 / tau))
    assert nt_xent(z, z.clone(), temperature=tau).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_collapsed_embeddings_give_log_2n_minus_1(n: int) -> None:
    """All 4N similarities equal: every anchor spreads over 2N-1 candidates -> log(2N - 1)
    (the "loss sits at ln(2N-1)" symptom of METHODS.md §14); N = 1 has no negative -> 0."""
    v = torch.randn(1, 8, generator=torch.Generator().manual_seed(n))
    z1 = v.expand(n, 8) * 3.0
    z2 = v.expand(n, 8) * 0.5
    assert nt_xent(z1, z2, temperature=0.1).item() == pytest.approx(math.log(2 * n - 1), abs=1e-5)


def test_nt_xent_is_symmetric_in_the_views() -> None:
    z1, z2 = _views(12, 16, seed=42)
    torch.testing.assert_close(nt_xent(z1, z2, 0.2), nt_xent(z2, z1, 0.2), rtol=1e-6, atol=1e-6)


def test_nt_xent_is_half_of_the_official_summed_objective() -> None:
    """google-research/simclr sums loss_a + loss_b and averages over N (METHODS.md §2), with
    loss_a = CE over [logits_ab, logits_aa] for the view-1 anchors; this is 2x the mean over 2N."""
    z1, z2 = _views(10, 12, seed=8)
    tau = 0.3
    h1 = z1 / z1.norm(dim=1, keepdim=True)
    h2 = z2 / z2.norm(dim=1, keepdim=True)
    n = h1.shape[0]
    mask = torch.eye(n, dtype=torch.float64) * 1e9
    labels = torch.arange(n)
    loss_a = torch.nn.functional.cross_entropy(
        torch.cat([h1 @ h2.t() / tau, h1 @ h1.t() / tau - mask], dim=1), labels, reduction="none"
    )
    loss_b = torch.nn.functional.cross_entropy(
        torch.cat([h2 @ h1.t() / tau, h2 @ h2.t() / tau - mask], dim=1), labels, reduction="none"
    )
    official = (loss_a + loss_b).mean().item()
    assert 2.0 * nt_xent(z1, z2, temperature=tau).item() == pytest.approx(official, rel=1e-5)
