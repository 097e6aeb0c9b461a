"""InfoNCE with a negative bank (MoCo v1/v2) and with in-batch negatives (MoCo v3).

The library computes in float32 (even for float64 inputs). Tolerances against the float64 references:
values ``rtol=1e-5, atol=1e-5``; gradients ``rtol=1e-4`` and ``atol=1e-6 · 1/(Nτ min_i|x_i|)``, the
float32 rounding of the individual terms (a positive and a softmax-weighted sum that nearly cancel
at low τ), see :func:`_grad_tol`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pytest
import torch

from siamssl.losses import InfoNCELoss, info_nce

VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
# (N, D, K): K = 0 means in-batch negatives.
SHAPES = [(1, 4, 0), (4, 8, 0), (8, 5, 0), (16, 32, 0), (1, 4, 3), (4, 8, 16), (8, 5, 7), (16, 32, 64)]
TEMPERATURES = [0.07, 0.2, 1.0]


def _inputs(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0 + 0.3
    # Keys correlated with their queries so that the positive logit matters.
    key = q + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    key = key * (torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 + 0.1)
    bank = torch.randn(k, d, generator=g, dtype=torch.float64) * 5.0 if k else None
    return q, key, bank


def _unit(row: np.ndarray) -> np.ndarray:
    return row / math.sqrt(float(np.dot(row, row)))


def _ref_info_nce(q: np.ndarray, k: np.ndarray, bank: Optional[np.ndarray], tau: float) -> float:
    """-1/N Σ_i [ s(u_i, v_i)/τ - log Σ_{c ∈ C_i} exp(s(u_i, c)/τ) ], one anchor at a time.

    C_i = {v_i} ∪ bank with a bank, else {v_j : j} (the positive and the other keys)."""
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        u = _unit(q[i])
        positive = float(np.dot(u, _unit(k[i]))) / tau
        if bank is not None:
            candidates = [positive] + [float(np.dot(u, _unit(b))) / tau for b in bank]
        else:
            candidates = [float(np.dot(u, _unit(k[j]))) / tau for j in range(n)]
        top = max(candidates)
        log_denominator = top + math.log(sum(math.exp(c - top) for c in candidates))
        total += log_denominator - positive
    return total / n


def _grad_tol(n: int, tau: float, raw: torch.Tensor) -> dict[str, float]:
    return dict(rtol=1e-4, atol=1e-6 / (n * tau * raw.norm(dim=1).min().item()))


def _project(raw: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """Chain rule through x -> x/|x|: (I - x̂x̂ᵀ) g / |x| per row."""
    unit = raw / raw.norm(dim=1, keepdim=True)
    return (grad_unit - (grad_unit * unit).sum(dim=1, keepdim=True) * unit) / raw.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("n,d,k", SHAPES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_info_nce_matches_reference(n: int, d: int, k: int, tau: float) -> None:
    q, key, bank = _inputs(n, d, k, seed=1000 * n + 10 * d + k)
    expected = torch.tensor(
        _ref_info_nce(q.numpy(), key.numpy(), None if bank is None else bank.numpy(), tau), dtype=torch.float64
    )
    functional = info_nce(q, key, bank, temperature=tau)
    module = InfoNCELoss(temperature=tau)(q, key, bank)
    assert functional.dim() == 0 and functional.dtype == torch.float32
    torch.testing.assert_close(functional.double(), expected, **VALUE_TOL)
    torch.testing.assert_close(module.double(), expected, **VALUE_TOL)
    torch.testing.assert_close(
        InfoNCELoss(temperature=tau, gather_distributed=False)(q, key, bank).double(), expected, **VALUE_TOL
    )


def test_module_default_temperature_is_moco_v1() -> None:
    q, key, bank = _inputs(8, 16, 32, seed=4)
    assert InfoNCELoss().temperature == 0.07
    expected = _ref_info_nce(q.numpy(), key.numpy(), bank.numpy(), 0.07)
    assert InfoNCELoss()(q, key, bank).item() == pytest.approx(expected, rel=1e-5)
    assert "temperature=0.07" in repr(InfoNCELoss())


@pytest.mark.parametrize("n,d,k", [(4, 8, 16), (16, 32, 64), (8, 5, 7)])
@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("unit_inputs", [True, False])
def test_info_nce_bank_gradient_matches_unified_framework(
    n: int, d: int, k: int, tau: float, unit_inputs: bool
) -> None:
    """Unified gradient framework (Tao et al., CVPR 2022), bank version.

    With u_i = q_i/|q_i|, v_i = k_i/|k_i|, b_m = bank_m/|bank_m| and the softmax over the K+1
    candidates s_i = softmax([u_i·v_i, u_i·b_1, ..., u_i·b_K]/τ):

        ∂L/∂u_i = 1/(Nτ) [ -v_i + s_i0 v_i + Σ_m s_im b_m ]     (positive term + weighted negatives)
        ∂L/∂v_i = 1/(Nτ) (s_i0 - 1) u_i
        ∂L/∂b_m = 1/(Nτ) Σ_i s_im u_i

    and since the loss normalizes internally, ∂L/∂q_i = (I - u_i u_iᵀ) ∂L/∂u_i / |q_i| (the
    projection alone when the inputs are unit-norm).
    """
    q0, k0, b0 = _inputs(n, d, k, seed=77 + n + k)
    assert b0 is not None
    if unit_inputs:
        q0, k0, b0 = (x / x.norm(dim=1, keepdim=True) for x in (q0, k0, b0))
    q, key, bank = (x.clone().requires_grad_(True) for x in (q0, k0, b0))
    info_nce(q, key, bank, temperature=tau).backward()

    u, v, b = (x / x.norm(dim=1, keepdim=True) for x in (q0, k0, b0))
    logits = torch.cat([(u * v).sum(dim=1, keepdim=True), u @ b.t()], dim=1) / tau
    s = torch.softmax(logits, dim=1)
    grad_u = (-v + s[:, :1] * v + s[:, 1:] @ b) / (n * tau)
    grad_v = (s[:, :1] - 1.0) * u / (n * tau)
    grad_b = s[:, 1:].t() @ u / (n * tau)
    for actual, raw, grad_unit in ((q.grad, q0, grad_u), (key.grad, k0, grad_v), (bank.grad, b0, grad_b)):
        expected = _project(raw, grad_unit)
        if unit_inputs:  # |x| = 1: the gradient is exactly the tangent projection
            torch.testing.assert_close(
                expected, grad_unit - (grad_unit * raw).sum(dim=1, keepdim=True) * raw, rtol=1e-12, atol=1e-14
            )
        torch.testing.assert_close(actual, expected, **_grad_tol(n, tau, raw))


@pytest.mark.parametrize("n,d", [(4, 8), (16, 32), (9, 3)])
@pytest.mark.parametrize("tau", [0.07, 1.0])
@pytest.mark.parametrize("unit_inputs", [True, False])
def test_info_nce_in_batch_gradient_matches_unified_framework(n: int, d: int, tau: float, unit_inputs: bool) -> None:
    """Unified gradient framework, in-batch (MoCo v3) version. With s_ij = softmax_j(u_i·v_j/τ):

        ∂L/∂u_i = 1/(Nτ) [ -v_i + Σ_j s_ij v_j ]
        ∂L/∂v_j = 1/(Nτ) [ -u_j + Σ_i s_ij u_i ]

    then the projection (I - x̂x̂ᵀ)/|x| of the internal normalization. (MoCo v3 computes its keys
    under no_grad, so only ∂L/∂u is used there; ∂L/∂v is checked because the function allows it.)
    """
    q0, k0, _ = _inputs(n, d, 0, seed=5 * n + d)
    if unit_inputs:
        q0, k0 = (x / x.norm(dim=1, keepdim=True) for x in (q0, k0))
    q, key = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
    info_nce(q, key, temperature=tau).backward()

    u, v = (x / x.norm(dim=1, keepdim=True) for x in (q0, k0))
    s = torch.softmax(u @ v.t() / tau, dim=1)
    grad_u = (-v + s @ v) / (n * tau)
    grad_v = (-u + s.t() @ u) / (n * tau)
    for actual, raw, grad_unit in ((q.grad, q0, grad_u), (key.grad, k0, grad_v)):
        expected = _project(raw, grad_unit)
        torch.testing.assert_close(actual, expected, **_grad_tol(n, tau, raw))


@pytest.mark.parametrize("n,d", [(4, 4), (5, 16)])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_aligned_orthogonal_keys(n: int, d: int, tau: float) -> None:
    """q_i = k_i orthonormal: positive logit 1/τ, every negative logit 0, so
    L = log(1 + (N-1) e^{-1/τ}) in-batch and log(1 + K e^{-1/τ}) with an orthogonal bank."""
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64))
    rows = basis.t()
    q = rows[:n] * 3.0
    key = rows[:n] * 0.5
    expected = math.log1p((n - 1) * math.exp(-1.0 / tau))
    assert info_nce(q, key, temperature=tau).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if n < d:
        bank = rows[n:]
        expected_bank = math.log1p(bank.shape[0] * math.exp(-1.0 / tau))
        assert info_nce(q, key, bank, temperature=tau).item() == pytest.approx(expected_bank, rel=1e-5, abs=1e-6)
    # Low temperature: the loss vanishes.
    assert info_nce(q, key, temperature=0.02).item() < 1e-6


@pytest.mark.parametrize("n,k", [(4, 0), (8, 0), (4, 12), (8, 5)])
def test_collapsed_embeddings_give_log_of_candidate_count(n: int, k: int) -> None:
    v = torch.randn(1, 6, generator=torch.Generator().manual_seed(n + k))
    q, key = v.expand(n, 6) * 2.0, v.expand(n, 6)
    bank = v.expand(k, 6) * 7.0 if k else None
    expected = math.log(k + 1) if k else math.log(n)
    assert info_nce(q, key, bank, temperature=0.1).item() == pytest.approx(expected, rel=1e-5)


def test_in_batch_labels_follow_row_order() -> None:
    """Row i of k is the positive of row i of q: a joint permutation leaves the loss unchanged,
    permuting only the keys does not."""
    q, key, _ = _inputs(8, 16, 0, seed=12)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    base = info_nce(q, key, temperature=0.2)
    torch.testing.assert_close(info_nce(q[perm], key[perm], temperature=0.2), base, rtol=1e-5, atol=1e-6)
    assert abs(info_nce(q, key[perm], temperature=0.2).item() - base.item()) > 0.1
