"""Negative cosine similarity (SimSiam) and the normalized regression loss (BYOL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.losses._precision import float32_loss


@float32_loss
def negative_cosine_similarity(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    """SimSiam's criterion ``D(p, z) = -mean_i cos(p_i, sg(z_i))``.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, Eq. 1-2. The official
    code (facebookresearch/simsiam) detaches ``z`` in the model and uses ``nn.CosineSimilarity(dim=1)``.

    Args:
        p: predictions, shape (N, D).
        z: targets, shape (N, D). Detached when ``stop_gradient`` (the paper's ablation turns it off).
    Returns:
        Scalar in [-1, 1]; -1 when every prediction points along its target.
    """
    if stop_gradient:
        z = z.detach()
    return -F.cosine_similarity(p, z, dim=-1).mean()


@float32_loss
def normalized_mse(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    """BYOL's regression loss ``mean_i ||p_i/||p_i|| - z_i/||z_i|| ||² = mean_i (2 - 2 cos(p_i, z_i))``.

    Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, Eq. 2; deepmind-research/byol
    ``helpers.regression_loss``, including its safe norm ``x·rsqrt(max(Σx², 1e-12))``.
    """
    if stop_gradient:
        z = z.detach()
    p_unit = p * torch.rsqrt(p.pow(2).sum(dim=-1, keepdim=True).clamp_min(1e-12))
    z_unit = z * torch.rsqrt(z.pow(2).sum(dim=-1, keepdim=True).clamp_min(1e-12))
    return (p_unit - z_unit).pow(2).sum(dim=-1).mean()

class NegativeCosineLoss(nn.Module):
    """``NegativeCosineLoss(stop_gradient=True)(p, z) = -mean cos(p, sg(z))``; see
    :func:`negative_cosine_similarity`."""

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        return negative_cosine_similarity(p, z, self.stop_gradient)

    def extra_repr(self) -> str:
        return f"stop_gradient={self.stop_gradient}"


class NormalizedMSELoss(nn.Module):
    """``NormalizedMSELoss()(p, z) = mean (2 - 2 cos(p, sg(z)))``; see :func:`normalized_mse`."""

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        return normalized_mse(p, z, self.stop_gradient)
