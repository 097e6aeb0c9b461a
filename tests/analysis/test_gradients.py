"""The analysis API: for every family, the closed-form decomposition pushed through the
normalization equals the autograd gradient of the library loss (rtol 1e-4, atol 1e-5 × max|grad|:
the losses compute in float32), and each decomposition has the structure Tao et al. describe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from siamssl.analysis import (
    GradientDecomposition,
    barlow_twins_gradient,
    infonce_gradient,
    linear_predictor_gradient,
    simclr_gradient,
    unigrad_gradient,
)
from siamssl.heads import DirectPredictor, DirectPredOptions
from siamssl.losses import unigrad_correlation


def _pair(n: int, d: int, seed: int, noise: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.7 + 0.2
    return z1, z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


def _assert_matches(result: GradientDecomposition) -> None:
    expected = result.closed_form()
    assert result.gradient.shape == expected.shape == result.online.shape
    torch.testing.assert_close(result.gradient.double(), expected.double(), rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("n,d,k", [(6, 8, 0), (6, 8, 20), (12, 5, 7)])
@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_infonce_decomposition_matches_autograd(n, d, k, tau):
    online, target = _pair(n, d, seed=n + k)
    queue = torch.randn(k, d, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) if k else None
    result = infonce_gradient(online, target, queue, temperature=tau)
    _assert_matches(result)
    assert float(result.balance) == 1.0 and float(result.scale) == pytest.approx(1 / (n * tau))
    torch.testing.assert_close(result.positive, -F.normalize(target, dim=1))


def test_infonce_gradient_vanishes_at_collapse():
    """Every key identical: the softmax-weighted negatives equal the positive, so p + n = 0."""
    online = torch.randn(5, 6, dtype=torch.float64)
    target = torch.ones(5, 6, dtype=torch.float64)
    result = infonce_gradient(online, target)
    torch.testing.assert_close(result.unified, torch.zeros_like(result.unified), rtol=0, atol=1e-12)
    assert result.negative_to_positive_ratio() == pytest.approx(1.0)


@pytest.mark.parametrize("n,d", [(2, 3), (6, 8), (9, 16)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("stop_gradient", [False, True])
def test_simclr_decomposition_matches_autograd(n, d, tau, stop_gradient):
    online, other = _pair(n, d, seed=3 * n + d)
    result = simclr_gradient(online, other, temperature=tau, stop_gradient=stop_gradient)
    _assert_matches(result)
    factor = 1.0 if stop_gradient else 2.0
    torch.testing.assert_close(result.positive, -factor * F.normalize(other, dim=1))


def test_simclr_stop_gradient_keeps_only_the_anchor_part():
    """The full gradient minus the stop-gradient one is the candidate part, −v + Σ_a s_ai h_a; it is
    not zero, and it is the same whether or not the other view is detached."""
    online, other = _pair(6, 8, seed=1)
    full, stopped = simclr_gradient(online, other), simclr_gradient(online, other, stop_gradient=True)
    candidate_part = full.unified - stopped.unified
    assert candidate_part.abs().max() > 1e-3
    torch.testing.assert_close(full.positive - stopped.positive, stopped.positive)


@pytest.mark.parametrize("loss", ["negative_cosine", "normalized_mse"])
@pytest.mark.parametrize("n,d", [(8, 6), (16, 12)])
def test_linear_predictor_decomposition_matches_autograd_for_any_w(loss, n, d):
    online, target = _pair(n, d, seed=n * d)
    w = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    result = linear_predictor_gradient(online, target, w, loss=loss)
    _assert_matches(result)
    assert result.balance.shape == (n, 1) and result.scale.shape == (n, 1)


@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_directpred_gradient_is_minus_w_t2_plus_lambda_f_z1(eps):
    """With DirectPred's W (set from the predictor inputs' correlation F), the negative term is
    F̃ z1 with F̃ = WᵀW = F/s_max + 2ε (F/s_max)^{1/2} + ε² I, and the decomposition is the autograd
    gradient of SimSiam's and BYOL's losses."""
    online, target = _pair(16, 6, seed=4)
    head = DirectPredictor(6, DirectPredOptions(rho=0.3, eps=eps))
    head.observe(online.float(), target.float())
    head.update()
    s, u = torch.linalg.eigh(head.correlation.double())
    root = (u * (s.clamp_min(0) / s.max()).sqrt()) @ u.t()
    f_tilde = root @ root + 2 * eps * root + eps**2 * torch.eye(6, dtype=torch.float64)
    for loss in ("negative_cosine", "normalized_mse"):
        result = linear_predictor_gradient(online, target, head, loss=loss)
        _assert_matches(result)
        torch.testing.assert_close(result.negative, online @ f_tilde, rtol=1e-4, atol=1e-5 * result.negative.abs().max().item())
        torch.testing.assert_close(result.positive, -F.normalize(target, dim=1) @ head.weight.double())


@pytest.mark.parametrize("n,d", [(8, 4), (16, 12), (6, 10)])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_barlow_twins_decomposition_matches_autograd(n, d, lambd, eps):
    online, target = _pair(n, d, seed=n + d)
    result = barlow_twins_gradient(online, target, lambd=lambd, eps=eps)
    _assert_matches(result)
    assert float(result.balance) == lambd and float(result.scale) == pytest.approx(2 / n)


def test_barlow_twins_positive_weight_is_one_minus_one_minus_lambda_times_diag_c():
    """Perfectly correlated views (C_ii = 1): A = λ I, the positive term is −λ k."""
    online = torch.randn(10, 4, dtype=torch.float64)
    result = barlow_twins_gradient(online, 3.0 * online + 1.0, lambd=0.25, eps=0.0)
    k = (online - online.mean(0)) / online.std(0, unbiased=False)
    torch.testing.assert_close(result.positive, -0.25 * k)


@pytest.mark.parametrize("lambd", [1.0, 100.0])
def test_unigrad_surrogate_injects_exactly_the_prescribed_gradient(lambd):
    online, target = _pair(12, 8, seed=5)
    _, momentum_other_view = _pair(12, 8, seed=6)
    correlation = unigrad_correlation(target, momentum_other_view)
    result = unigrad_gradient(online, target, correlation, lambd=lambd)
    _assert_matches(result)
    torch.testing.assert_close(result.negative, F.normalize(online, dim=1) @ correlation.double())


def test_term_norms_and_ratio():
    online, target = _pair(8, 6, seed=7)
    correlation = unigrad_correlation(online, target)
    result = unigrad_gradient(online, target, correlation, lambd=10.0)
    positive, negative = result.term_norms()
    torch.testing.assert_close(positive, torch.full((8,), 1 / 16, dtype=torch.float64))  # ‖u2m‖ = 1, c = 1/2N
    expected_negative = 10.0 / 16 * (F.normalize(online, dim=1) @ correlation.double()).norm(dim=1)
    torch.testing.assert_close(negative, expected_negative)
    assert result.negative_to_positive_ratio() == pytest.approx(float((negative / positive).mean()))
    assert not math.isnan(result.negative_to_positive_ratio())
