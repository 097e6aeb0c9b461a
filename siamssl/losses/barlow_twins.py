"""Barlow Twins: redundancy reduction through the cross-correlation of two views."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from siamssl.distributed import all_reduce_sum_with_grad
from siamssl.losses._precision import float32_loss


def _no_reduction(x: Tensor) -> Tensor:
    return x


@float32_loss
def barlow_twins_loss(
    z1: Tensor, z2: Tensor, lambd: float = 0.0051, eps: float = 1e-5, gather_distributed: bool = True
) -> Tensor:
    """Barlow Twins (Zbontar et al., ICML 2021, Eq. 1-2):

        C = ẑ1ᵀ ẑ2 / N,   L = Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²

    where ẑ standardizes each dimension over the batch like ``BatchNorm1d(affine=False)`` in training
    mode (biased variance, ``eps`` inside the square root), as facebookresearch/barlowtwins does
    before dividing by the global batch size.

    Under torch.distributed the means, variances and ``C`` are sums over all ranks, so ``C`` is the
    global cross-correlation. The official code's ``all_reduce`` is not autograd-aware and yields
    1/world_size of the gradient; here every rank gets the exact one-process gradient.

    Args:
        z1, z2: (N, D) embeddings of the two views. lambd: λ, the off-diagonal weight.
        eps: the BatchNorm epsilon.
        gather_distributed: batch statistics over all ranks (the safe default).
    """
    reduce: Callable[[Tensor], Tensor] = all_reduce_sum_with_grad if gather_distributed else _no_reduction
    # a fill kernel, not a tensor made from a host value: no host-to-device copy in the step
    count = reduce(z1.new_full((), float(z1.shape[0])))

    def standardize(z: Tensor) -> Tensor:
        centered = z - reduce(z.sum(dim=0)) / count
        var = reduce(centered.pow(2).sum(dim=0)) / count
        return centered * torch.rsqrt(var + eps)

    c = reduce(standardize(z1).t() @ standardize(z2)) / count
    diagonal = torch.diagonal(c)
    on_diag = (1.0 - diagonal).pow(2).sum()
    off_diag = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwinsLoss(nn.Module):
    """``BarlowTwinsLoss(lambd=0.0051)(z1, z2)``; see :func:`barlow_twins_loss`."""

    def __init__(self, lambd: float = 0.0051, eps: float = 1e-5, gather_distributed: bool = True) -> None:
        super().__init__()
        self.lambd = lambd
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return barlow_twins_loss(z1, z2, self.lambd, self.eps, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"
