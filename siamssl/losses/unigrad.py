"""UniGrad: the unified gradient of Siamese methods, applied directly through a surrogate loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.losses._precision import float32_loss


@float32_loss
def unigrad_correlation(z1m: Tensor, z2m: Tensor) -> Tensor:
    """The batch correlation ``F_batch = (u1mᵀu1m + u2mᵀu2m) / 2N`` of the l2-normalized momentum
    (target) projections of both views, in float32 and without gradient.

    UniGrad averages it over ranks (``all_reduce`` then ``/ world_size``) and keeps the moving
    average ``F ← ρF + (1 − ρ)F_batch``; both belong to the method (fundamentalvision/UniGrad
    ``project/pretrainer.py``, ``loss_unigrad``).
    """
    u1, u2 = F.normalize(z1m.detach(), dim=1), F.normalize(z2m.detach(), dim=1)
    return (u1.t() @ u1 + u2.t() @ u2) / (2 * u1.shape[0])


@float32_loss
def unigrad_loss(z1: Tensor, z2: Tensor, z1m: Tensor, z2m: Tensor, correlation: Tensor, lambd: float = 100.0) -> Tensor:
    """UniGrad (Tao et al., "Exploring the Equivalence of Siamese Self-Supervised Learning via A Unified
    Gradient Framework", CVPR 2022, Eq. 9), implemented, as in the official ``loss_unigrad``, by the
    surrogate whose gradient is the prescribed one:

        g1 = −u2m + λ F u1,   g2 = −u1m + λ F u2,   L = ½ [ mean_i ⟨sg(g1_i), u1_i⟩ + mean_i ⟨sg(g2_i), u2_i⟩ ]

    with u = z/‖z‖ (online), u·m the normalized momentum projections and F the moving-average
    correlation matrix (symmetric, so ``u1 F`` row-wise is ``F u1``). Hence ∂L/∂u1_i = g1_i / 2N exactly,
    and ∂L/∂z1_i = (I − u1_i u1_iᵀ) g1_i / (2N ‖z1_i‖) through the normalization. The loss *value* is
    not a training objective to watch (it is ⟨g, u⟩); the positive similarity is.

    Args:
        z1, z2: online projections (N, D) of the two views.
        z1m, z2m: momentum-branch projections (N, D); no gradient flows into them.
        correlation: F, (D, D). lambd: λ, the weight of the negative (decorrelation) term (100).
    """
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    u1m, u2m = F.normalize(z1m.detach(), dim=1), F.normalize(z2m.detach(), dim=1)
    correlation = correlation.detach()
    with torch.no_grad():
        g1 = -u2m + lambd * (u1 @ correlation)
        g2 = -u1m + lambd * (u2 @ correlation)
    return 0.5 * ((g1 * u1).sum(dim=1).mean() + (g2 * u2).sum(dim=1).mean())


class UniGradLoss(nn.Module):
    """``UniGradLoss(lambd=100)(z1, z2, z1m, z2m, correlation)``; see :func:`unigrad_loss`."""

    def __init__(self, lambd: float = 100.0) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, z1: Tensor, z2: Tensor, z1m: Tensor, z2m: Tensor, correlation: Tensor) -> Tensor:
        return unigrad_loss(z1, z2, z1m, z2m, correlation, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"
