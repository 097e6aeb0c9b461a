"""NCE and non-parametric softmax over a memory bank against independent float64 references.

The references follow the papers' formulas one anchor at a time (Wu et al. 2018, Eqs. 2 and 4-7:
``h = P/(P + K·P_n)``, ``L = −log h(pos) − Σ log(1 − h(noise))``, with the official criterion's eps).
The library computes in float32: values ``rtol=1e-5``; gradients ``rtol=1e-4, atol=1e-6``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import (
    NCELoss,
    NonParametricSoftmaxLoss,
    full_softmax_loss,
    nce_loss,
    nce_normalizer,
    proximal_penalty,
    sampled_softmax_loss,
)
from siamssl.losses.nce import NCE_EPS

VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
CASES = [(1, 4, 7, 1), (4, 8, 20, 5), (8, 16, 50, 30)]  # (B, D, N, K)
TEMPERATURES = [0.07, 0.5]


def _inputs(b: int, d: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bank = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    index = torch.randperm(n, generator=g)[:b]
    # Anchors near their own entry, unnormalized (the loss normalizes them).
    features = (bank[index] + 0.7 * torch.randn(b, d, generator=g, dtype=torch.float64)) * 3.0
    noise = torch.randint(n, (b, k), generator=g)
    return features, bank, torch.cat([index[:, None], noise], dim=1)


def _unit(row: np.ndarray) -> np.ndarray:
    return row / math.sqrt(float(np.dot(row, row)))


def _ref_nce(x: np.ndarray, bank: np.ndarray, cand: np.ndarray, z: float, tau: float) -> float:
    n, k = bank.shape[0], cand.shape[1] - 1
    noise_mass = k / n
    total = 0.0
    for i in range(x.shape[0]):
        u = _unit(x[i])
        probs = [math.exp(float(np.dot(u, bank[c])) / tau) / z for c in cand[i]]
        total -= math.log(probs[0] / (probs[0] + noise_mass + NCE_EPS))
        for p in probs[1:]:
            total -= math.log(noise_mass / (p + noise_mass + NCE_EPS))
    return total / x.shape[0]


def _ref_full_softmax(x: np.ndarray, bank: np.ndarray, index: np.ndarray, tau: float) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        logits = [float(np.dot(_unit(x[i]), b)) / tau for b in bank]
        top = max(logits)
        total += top + math.log(sum(math.exp(s - top) for s in logits)) - logits[index[i]]
    return total / x.shape[0]


def _ref_sampled_softmax(x: np.ndarray, bank: np.ndarray, cand: np.ndarray, tau: float) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        logits = [float(np.dot(_unit(x[i]), bank[c])) / tau for c in cand[i]]
        top = max(logits)
        total += top + math.log(sum(math.exp(s - top) for s in logits)) - logits[0]
    return total / x.shape[0]


def _torch_ref_nce(x: torch.Tensor, bank: torch.Tensor, cand: torch.Tensor, z: float, tau: float) -> torch.Tensor:
    """The same formula in float64 autograd, row by row (for gradients)."""
    noise_mass = (cand.shape[1] - 1) / bank.shape[0]
    total = x.new_zeros(())
    for i in range(x.shape[0]):
        u = x[i] / x[i].norm()
        probs = torch.exp(bank[cand[i]] @ u / tau) / z
        h_pos = probs[0] / (probs[0] + noise_mass + NCE_EPS)
        total = total - torch.log(h_pos) - torch.log(noise_mass / (probs[1:] + noise_mass + NCE_EPS)).sum()
    return total / x.shape[0]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nce_loss_value_and_gradient_match_reference(case, tau):
    x, bank, cand = _inputs(*case, seed=1)
    z = float(nce_normalizer(x, bank, cand, tau))
    expected = _ref_nce(x.numpy(), bank.numpy(), cand.numpy(), z, tau)
    xf = x.float().requires_grad_(True)
    out = nce_loss(xf, bank.float(), cand, z, tau)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), **VALUE_TOL)
    out.backward()
    xr = x.clone().requires_grad_(True)
    _torch_ref_nce(xr, bank, cand, z, tau).backward()
    torch.testing.assert_close(xf.grad.double(), xr.grad, **GRAD_TOL)


@pytest.mark.parametrize("case", CASES)
def test_nce_normalizer_is_n_times_mean_exponential_and_carries_no_gradient(case):
    x, bank, cand = _inputs(*case, seed=2)
    tau = 0.1
    expected = np.mean([[math.exp(float(np.dot(_unit(x[i].numpy()), bank[c].numpy())) / tau) for c in cand[i]] for i in range(len(x))])
    z = nce_normalizer(x.requires_grad_(True), bank, cand, tau)
    assert not z.requires_grad
    torch.testing.assert_close(z.double(), torch.tensor(expected * bank.shape[0], dtype=torch.float64), **VALUE_TOL)


def test_nce_normalizer_tensor_gets_no_gradient_and_bank_gets_none():
    x, bank, cand = _inputs(4, 8, 20, 5, seed=3)
    bank = bank.float().requires_grad_(True)
    z = torch.tensor(30.0, requires_grad=True)
    nce_loss(x.float().requires_grad_(True), bank, cand, z, 0.07).backward()
    assert z.grad is None and bank.grad is None


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_full_softmax_matches_reference(case, tau):
    x, bank, cand = _inputs(*case, seed=4)
    index = cand[:, 0]
    expected = _ref_full_softmax(x.numpy(), bank.numpy(), index.numpy(), tau)
    out = full_softmax_loss(x.float(), bank.float(), index, tau)
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), **VALUE_TOL)
    assert torch.equal(NonParametricSoftmaxLoss(tau)(x.float(), bank.float(), index), out)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_sampled_softmax_matches_reference(case, tau):
    x, bank, cand = _inputs(*case, seed=5)
    expected = _ref_sampled_softmax(x.numpy(), bank.numpy(), cand.numpy(), tau)
    out = sampled_softmax_loss(x.float(), bank.float(), cand, tau)
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), **VALUE_TOL)


def test_nce_module_and_the_perfect_discrimination_limit():
    x, bank, cand = _inputs(4, 8, 20, 5, seed=6)
    assert torch.equal(NCELoss(0.2)(x.float(), bank.float(), cand, 10.0), nce_loss(x.float(), bank.float(), cand, 10.0, 0.2))
    # Orthonormal bank, anchors on their own entry, noise elsewhere: with Z = e^10 and τ = 0.05,
    # P(pos) = e^10 and P(noise) = e^-10, so h(pos) → 1, h(noise) → 0 and the loss → 0.
    eye = torch.eye(8)
    index = torch.arange(4)
    noise = (index[:, None] + torch.arange(1, 4)[None, :] * 1 + 3) % 8  # never the anchor's own entry
    separated = torch.cat([index[:, None], noise], dim=1)
    assert nce_loss(eye[index], eye, separated, math.exp(10.0), 0.05) < 1e-3
    # The same scores with the positive drawn as noise: each such term costs about log(P/(K/N)) ≈ 11.
    confused = torch.cat([index[:, None], index[:, None].expand(4, 3)], dim=1)
    assert nce_loss(eye[index], eye, confused, math.exp(10.0), 0.05) > 3 * 10.0
    with pytest.raises(ValueError, match="at least one noise"):
        nce_loss(x.float(), bank.float(), cand[:, :1], 10.0, 0.2)


def test_proximal_penalty_value_and_closed_form_gradient():
    g = torch.Generator().manual_seed(7)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    previous = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = proximal_penalty(v, previous)
    expected = sum(float(((v[i] - previous[i]) ** 2).sum().detach()) for i in range(6)) / 6
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), **VALUE_TOL)
    out.backward()
    # d/dv_i (1/B) Σ ||v − p||² = 2 (v_i − p_i) / B; the previous entry is a constant.
    torch.testing.assert_close(v.grad, 2 * (v - previous).detach() / 6, **GRAD_TOL)
    assert previous.grad is None


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda x, bank, cand: nce_loss(x, bank, cand, 25.0, 0.07),
        lambda x, bank, cand: full_softmax_loss(x, bank, cand[:, 0], 0.07),
        lambda x, bank, cand: sampled_softmax_loss(x, bank, cand, 0.07),
    ],
    ids=["nce", "full_softmax", "sampled_softmax"],
)
def test_low_precision_and_autocast_give_float32(loss_fn):
    x, bank, cand = _inputs(4, 8, 20, 5, seed=8)
    x, bank = x.float(), bank.float()
    reference = loss_fn(x, bank, cand)
    half = loss_fn(x.bfloat16(), bank, cand)
    assert half.dtype == torch.float32 and torch.equal(half, loss_fn(x.bfloat16().float(), bank, cand))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(x, bank, cand)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
