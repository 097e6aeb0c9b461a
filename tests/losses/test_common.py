"""Contract shared by every loss: float32 scalars for low-precision inputs, behaviour under CPU
autocast, and ``gather_distributed`` being a no-op when torch.distributed is not initialized.

Tolerances: bf16 inputs must give *exactly* the float32 result on the same (upcast) values, since the
losses cast first; under autocast the result must be within bf16 precision (``rtol=atol=3e-2``)
of the float32 value, and, per the package contract ("return a scalar computed in float32"), equal to
it to ``rtol=1e-5, atol=1e-6``.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.distributed as dist

from siamssl.losses import (
    BarlowTwinsLoss,
    CPCLoss,
    InvariantSpreadingLoss,
    InfoNCELoss,
    NegativeCosineLoss,
    NormalizedMSELoss,
    NTXentLoss,
    VICRegLoss,
    barlow_twins_loss,
    cpc_loss,
    info_nce,
    invariant_spreading_loss,
    negative_cosine_similarity,
    normalized_mse,
    nt_xent,
    vicreg_loss,
)

N, D, K = 12, 24, 40
_BANK = torch.randn(K, D, generator=torch.Generator().manual_seed(123))

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grid_loss(loss: Callable[..., torch.Tensor], **options) -> LossFn:
    """CPC's loss on (N, D) inputs: targets a (3, 4, 4, D/12) grid, predictions 1 row ahead."""
    return lambda a, b: loss(b.reshape(1, 3, 4, 4, -1), a.reshape(3, 4, 4, -1), **options)

LOSSES: dict[str, LossFn] = {
    "negative_cosine": lambda a, b: negative_cosine_similarity(a, b),
    "negative_cosine_no_sg": lambda a, b: negative_cosine_similarity(a, b, stop_gradient=False),
    "normalized_mse": lambda a, b: normalized_mse(a, b),
    "info_nce_in_batch": lambda a, b: info_nce(a, b, temperature=0.2),
    "info_nce_bank": lambda a, b: info_nce(a, b, _BANK, temperature=0.2),
    "nt_xent": lambda a, b: nt_xent(a, b, temperature=0.5),
    "barlow_twins": lambda a, b: barlow_twins_loss(a, b),
    "vicreg": lambda a, b: vicreg_loss(a, b),
    "invariant_spreading": lambda a, b: invariant_spreading_loss(a, b, 0.1),
    "cpc": _grid_loss(cpc_loss, offsets=[1]),
    "NegativeCosineLoss": NegativeCosineLoss(),
    "NormalizedMSELoss": NormalizedMSELoss(),
    "InfoNCELoss": InfoNCELoss(temperature=0.2),
    "NTXentLoss": NTXentLoss(),
    "BarlowTwinsLoss": BarlowTwinsLoss(),
    "VICRegLoss": VICRegLoss(),
    "InvariantSpreadingLoss": InvariantSpreadingLoss(0.1),
    "CPCLoss": _grid_loss(CPCLoss([1])),
}


def _views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, D, generator=g) * 1.5 + 0.2
    return z1, z1 + 0.6 * torch.randn(N, D, generator=g)


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_inputs_give_float32_scalar(name: str) -> None:
    loss_fn = LOSSES[name]
    z1, z2 = (z.bfloat16().requires_grad_(True) for z in _views(1))
    out = loss_fn(z1, z2)
    assert out.dim() == 0 and out.dtype == torch.float32
    # The cast happens first: identical to float32 on the same values.
    assert torch.equal(out.detach(), loss_fn(z1.detach().float(), z2.detach().float()))
    out.backward()
    assert z1.grad is not None and z1.grad.dtype == torch.bfloat16 and torch.isfinite(z1.grad.float()).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_float16_inputs_give_float32_scalar(name: str) -> None:
    z1, z2 = (z.half() for z in _views(2))
    out = LOSSES[name](z1, z2)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert torch.equal(out, LOSSES[name](z1.float(), z2.float()))


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_run_under_cpu_autocast(name: str) -> None:
    loss_fn = LOSSES[name]
    z1_0, z2_0 = _views(3)
    reference = loss_fn(z1_0, z2_0)
    weight = torch.eye(D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = z1_0 @ weight, z2_0 @ weight  # bf16 activations, as in a real AMP forward
        assert z1.dtype == torch.bfloat16
        out = loss_fn(z1, z2)
    assert out.dim() == 0 and torch.isfinite(out)
    torch.testing.assert_close(out.float(), reference, rtol=3e-2, atol=3e-2)
    out.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_autocast_returns_float32(name: str) -> None:
    z1, z2 = _views(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LOSSES[name](z1, z2)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", list(LOSSES))
def test_autocast_keeps_float32_precision(name: str) -> None:
    z1, z2 = _views(5)
    reference = LOSSES[name](z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LOSSES[name](z1, z2)
    torch.testing.assert_close(out.float(), reference, rtol=1e-5, atol=1e-6)


GATHERING: dict[str, Callable[[bool], LossFn]] = {
    "info_nce_in_batch": lambda gather: lambda a, b: info_nce(a, b, temperature=0.1, gather_distributed=gather),
    "info_nce_bank": lambda gather: lambda a, b: info_nce(a, b, _BANK.double(), 0.1, gather_distributed=gather),
    "nt_xent": lambda gather: lambda a, b: nt_xent(a, b, 0.3, gather_distributed=gather),
    "barlow_twins": lambda gather: lambda a, b: barlow_twins_loss(a, b, gather_distributed=gather),
    "vicreg": lambda gather: lambda a, b: vicreg_loss(a, b, gather_distributed=gather),
    "InfoNCELoss": lambda gather: InfoNCELoss(0.1, gather_distributed=gather),
    "NTXentLoss": lambda gather: NTXentLoss(0.3, gather_distributed=gather),
    "BarlowTwinsLoss": lambda gather: BarlowTwinsLoss(gather_distributed=gather),
    "VICRegLoss": lambda gather: VICRegLoss(gather_distributed=gather),
    "invariant_spreading": lambda gather: lambda a, b: invariant_spreading_loss(a, b, 0.2, gather_distributed=gather),
    "InvariantSpreadingLoss": lambda gather: InvariantSpreadingLoss(0.2, gather_distributed=gather),
    "cpc": lambda gather: _grid_loss(cpc_loss, offsets=[1], gather_distributed=gather),
    "CPCLoss": lambda gather: _grid_loss(CPCLoss([1], gather_distributed=gather)),
}


@pytest.mark.parametrize("name", list(GATHERING))
def test_gather_distributed_is_identity_without_process_group(name: str) -> None:
    assert not (dist.is_available() and dist.is_initialized())
    results = []
    for gather in (True, False):
        z1, z2 = (z.double().requires_grad_(True) for z in _views(6))
        out = GATHERING[name](gather)(z1, z2)
        out.backward()
        results.append((out.detach(), z1.grad, z2.grad))
    (out_t, g1_t, g2_t), (out_f, g1_f, g2_f) = results
    assert torch.equal(out_t, out_f)
    assert torch.equal(g1_t, g1_f) and torch.equal(g2_t, g2_f)
