"""SwAV as in facebookresearch/swav ``main_swav.py`` (METHODS.md §7): Sinkhorn-Knopp with ε 0.05 and
3 iterations, row normalizers all-reduced, columns scaled to sum to 1; the swapped-prediction loss
averages, over the assignment crops, the cross-entropy of every other crop divided by (V − 1).

References below are plain float64 loops written from the official code. Tolerances: Sinkhorn in
float64 ``rtol=1e-10``; in float32 ``rtol=1e-4`` (codes) and loss values ``rtol=1e-5``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from siamssl.losses import SwAVLoss, sinkhorn_knopp, swav_loss


def _ref_sinkhorn(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """``distributed_sinkhorn`` on one process, written out with loops over rows and columns."""
    q = np.exp(scores / epsilon).T.copy()  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row] /= q[row].sum() * k
        for col in range(b):
            q[:, col] /= q[:, col].sum() * b
    return (q * b).T


def _cosine_scores(b: int, k: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    prototypes = F.normalize(torch.randn(k, d, generator=g, dtype=dtype), dim=1)
    return z @ prototypes.t()


@pytest.mark.parametrize("b,k,iterations", [(8, 5, 3), (32, 100, 3), (64, 30, 1), (16, 16, 7)])
def test_sinkhorn_equals_float64_reference(b: int, k: int, iterations: int) -> None:
    scores = _cosine_scores(b, k, 8, seed=b + k)
    expected = torch.from_numpy(_ref_sinkhorn(scores.numpy(), 0.05, iterations))
    codes = sinkhorn_knopp(scores, 0.05, iterations)
    assert codes.dtype == torch.float64 and codes.shape == (b, k)
    torch.testing.assert_close(codes, expected, rtol=1e-10, atol=1e-12)
    codes32 = sinkhorn_knopp(scores.float(), 0.05, iterations)
    assert codes32.dtype == torch.float32
    torch.testing.assert_close(codes32.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("b,k", [(64, 30), (32, 100), (200, 20)])
def test_sinkhorn_marginals_are_uniform(b: int, k: int) -> None:
    """Each sample's code sums to 1 after any number of iterations; the prototype marginals reach
    the equipartition B/K as iterations grow (3 iterations are not enough for tiny batches)."""
    scores = _cosine_scores(b, k, 16, seed=7, dtype=torch.float32)
    three = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(three.sum(dim=1), torch.ones(b), atol=1e-5, rtol=0)
    converged = sinkhorn_knopp(scores, 0.05, 200)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(b), atol=1e-3, rtol=0)
    torch.testing.assert_close(converged.sum(dim=0) * k / b, torch.ones(k), atol=1e-3, rtol=0)
    gap = lambda codes: (codes.sum(dim=0) * k / b - 1).abs().max()  # noqa: E731
    assert gap(converged) < gap(three)


def test_sinkhorn_is_shift_invariant_and_stays_finite_for_offset_scores() -> None:
    """The exponent's global shift cancels exactly; offset scores, for which exp(s/ε) overflows
    float32 without the shift, give the same finite codes."""
    scores = _cosine_scores(16, 10, 8, seed=1)
    torch.testing.assert_close(sinkhorn_knopp(scores + 3.0), sinkhorn_knopp(scores), rtol=1e-10, atol=1e-12)
    offset = scores.float() + 5.0
    assert not torch.isfinite(torch.exp(offset / 0.05)).all()
    torch.testing.assert_close(sinkhorn_knopp(offset), sinkhorn_knopp(scores).float(), rtol=1e-4, atol=1e-6)


def test_sinkhorn_runs_in_float32_under_autocast_and_needs_no_grad() -> None:
    scores = _cosine_scores(16, 10, 8, seed=2, dtype=torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn_knopp(scores.bfloat16())
    assert codes.dtype == torch.float32 and not codes.requires_grad
    torch.testing.assert_close(codes, sinkhorn_knopp(scores.detach().bfloat16().float()), rtol=1e-5, atol=1e-7)


def _ref_swav(scores: np.ndarray, codes: np.ndarray, assign: list[int], temperature: float) -> float:
    """The official loop: for each assignment crop, −mean_b Σ_k q log softmax(x_v/τ) over v ≠ crop."""
    num_crops, b, _ = scores.shape
    loss = 0.0
    for a, crop in enumerate(assign):
        subloss = 0.0
        for v in range(num_crops):
            if v == crop:
                continue
            x = scores[v] / temperature
            log_p = x - np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)) - x.max(axis=1, keepdims=True)
            subloss -= np.mean(np.sum(codes[a] * log_p, axis=1))
        loss += subloss / (num_crops - 1)
    return loss / len(assign)


@pytest.mark.parametrize("num_crops,assign", [(2, [0, 1]), (4, [0, 1]), (5, [1]), (3, [2, 0])])
def test_swav_loss_matches_reference_and_its_gradient(num_crops: int, assign: list[int]) -> None:
    g = torch.Generator().manual_seed(num_crops)
    scores = (2 * torch.rand(num_crops, 6, 9, generator=g, dtype=torch.float64) - 1).requires_grad_()
    codes = torch.softmax(torch.randn(len(assign), 6, 9, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    expected = _ref_swav(scores.detach().numpy(), codes.detach().numpy(), assign, 0.1)
    loss = swav_loss(scores, codes, assign, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert SwAVLoss(0.1)(scores, codes, assign).item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert codes.grad is None  # codes are targets
    # Autograd through an independent float64 formula of the same loss.
    reference_scores = scores.detach().clone().requires_grad_()
    log_p = torch.log_softmax(reference_scores / 0.1, dim=-1)
    total = 0.0
    for a, crop in enumerate(assign):
        others = [v for v in range(num_crops) if v != crop]
        total = total + sum(-(codes[a].detach() * log_p[v]).sum(-1).mean() for v in others) / (num_crops - 1)
    (total / len(assign)).backward()
    torch.testing.assert_close(scores.grad, reference_scores.grad, rtol=1e-4, atol=1e-6)


def test_swav_loss_is_log_k_for_uniform_predictions() -> None:
    """Uniform scores predict every code at chance: the loss is ln K whatever the codes (collapse)."""
    codes = torch.softmax(torch.randn(2, 8, 3000), dim=-1)
    assert swav_loss(torch.zeros(4, 8, 3000), codes, [0, 1]).item() == pytest.approx(math.log(3000), rel=1e-6)


def test_swav_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 crops"):
        swav_loss(torch.zeros(1, 4, 5), torch.zeros(1, 4, 5), [0])
    with pytest.raises(ValueError, match="must index"):
        swav_loss(torch.zeros(2, 4, 5), torch.zeros(1, 4, 5), [2])
    with pytest.raises(ValueError, match="do not match"):
        swav_loss(torch.zeros(2, 4, 5), torch.zeros(2, 4, 5), [0])
