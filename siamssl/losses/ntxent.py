"""NT-Xent, SimCLR's normalized temperature-scaled cross-entropy over 2N anchors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import gather_with_grad, local_row_offset
from siamssl.losses._precision import float32_loss


@float32_loss
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather_distributed: bool = True) -> Tensor:
    """NT-Xent (Chen et al., "A Simple Framework for Contrastive Learning", ICML 2020, Eq. 1):

        ℓ(i, j) = -log( exp(s_ij/τ) / Σ_{k ≠ i} exp(s_ik/τ) ),   s = cosine similarity,
        L = 1/(2N) Σ_k [ℓ(2k-1, 2k) + ℓ(2k, 2k-1)]

    i.e. the mean over all 2N anchors; each anchor has one positive (its other view) and 2(N-1)
    negatives (2(N_global-1) under torch.distributed, gathered with gradient as in
    google-research/simclr ``add_contrastive_loss``). The official TF code *sums* the two
    directions and averages over N, which is exactly 2× this value; the SimCLR method applies that
    factor so that learning rates transfer from the paper.

    Args:
        z1, z2: the two views' projections, (N, D); row i of z1 and row i of z2 are positives.
        temperature: τ (0.5 for the CIFAR recipe, 0.1 for ImageNet at batch 4096).
        gather_distributed: use the other ranks' samples as negatives (the safe default).
    """
    h1 = F.normalize(z1, dim=1)
    h2 = F.normalize(z2, dim=1)
    n = h1.shape[0]
    all1, all2, offset = h1, h2, 0
    if gather_distributed:
        all1, all2 = gather_with_grad(h1), gather_with_grad(h2)
        offset = local_row_offset(n)
    candidates = torch.cat([all1, all2], dim=0)  # (2M, D): view-1 block then view-2 block
    m = all1.shape[0]
    anchors = torch.cat([h1, h2], dim=0)  # (2n, D)
    logits = anchors @ candidates.t() / temperature
    local = torch.arange(n, device=h1.device) + offset
    self_index = torch.cat([local, local + m])
    positive_index = torch.cat([local + m, local])
    rows = torch.arange(2 * n, device=h1.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive_index)


class NTXentLoss(nn.Module):
    """``NTXentLoss(temperature)(z1, z2)``; see :func:`nt_xent`."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
