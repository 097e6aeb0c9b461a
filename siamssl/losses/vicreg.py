"""VICReg: variance, invariance and covariance regularization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import gather_with_grad
from siamssl.losses._precision import float32_loss


def _off_diagonal_square_sum(m: Tensor) -> Tensor:
    return m.pow(2).sum() - torch.diagonal(m).pow(2).sum()


@float32_loss
def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = True,
) -> Tensor:
    """VICReg (Bardes et al., ICLR 2022) as in facebookresearch/vicreg ``main_vicreg.py``:

        inv = mean((z1 - z2)²)                                  (local batch, MSE over N×D)
        x, y = gathered z1, z2, each centred over the global batch of N rows
        var = ½ mean_j relu(1 - sqrt(Var(x_j) + eps)) + ½ mean_j relu(1 - sqrt(Var(y_j) + eps))
        cov = Σ_{i≠j} [xᵀx/(N-1)]_ij² / D + Σ_{i≠j} [yᵀy/(N-1)]_ij² / D
        L = sim_coeff·inv + std_coeff·var + cov_coeff·cov

    ``Var`` is unbiased. Note the code halves the variance term but sums the covariance term over
    the two branches (issues vicreg #8, #26), and centres only once. Under torch.distributed the
    variance and covariance use the batch gathered over all ranks with gradient (``FullGatherLayer``
    in the official code); the invariance term stays local, whose mean over ranks is the global mean.

    Args:
        z1, z2: (N, D) expander outputs of the two views.
    """
    invariance = F.mse_loss(z1, z2)
    if gather_distributed:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    n, d = z1.shape
    x = z1 - z1.mean(dim=0)
    y = z2 - z2.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    variance = 0.5 * F.relu(1.0 - std_x).mean() + 0.5 * F.relu(1.0 - std_y).mean()
    covariance = (_off_diagonal_square_sum(x.t() @ x / (n - 1)) + _off_diagonal_square_sum(y.t() @ y / (n - 1))) / d
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


class VICRegLoss(nn.Module):
    """``VICRegLoss(sim_coeff=25, std_coeff=25, cov_coeff=1)(z1, z2)``; see :func:`vicreg_loss`."""

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.sim_coeff = sim_coeff
        self.std_coeff = std_coeff
        self.cov_coeff = cov_coeff
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return vicreg_loss(z1, z2, self.sim_coeff, self.std_coeff, self.cov_coeff, self.eps, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}"
