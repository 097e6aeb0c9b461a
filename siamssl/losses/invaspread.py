"""InvaSpread's in-batch softmax embedding loss (invariant to augmentation, spread over instances)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import gather_with_grad, local_row_offset
from siamssl.losses._precision import float32_loss


@float32_loss
def invariant_spreading_loss(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    negative_weight: float = 1.0,
    stop_gradient_candidates: bool = True,
    gather_distributed: bool = True,
) -> Tensor:
    """InvaSpread (Ye, Zhang, Yuen, Chang, "Unsupervised Embedding Learning via Invariant and
    Spreading Instance Feature", CVPR 2019), as computed by the official
    ``BatchCriterion`` (mangye16/Unsupervised_Embedding_Learning ``BatchAverage.py`` @ 29de398).

    The 2N l2-normalized embeddings ``f = [normalize(z1); normalize(z2)]`` are both anchors and
    instance "classifiers". For anchor ``a`` with positive ``a⁺`` (its other view), over the
    candidates ``c ≠ a`` (all other embeddings of the global batch):

        s_ac = f_a · f_c / τ
        D_a  = exp(s_aa⁺) + m · Σ_{c ∉ {a, a⁺}} exp(s_ac)
        P_ac = exp(s_ac) / D_a
        ℓ_a  = −log P_aa⁺ − m · Σ_{c ∉ {a, a⁺}} log(1 − P_ac)
        L    = 1/(2N) Σ_a ℓ_a

    The first term is the invariance (the augmented view recognised as its instance), the second the
    spreading (every other instance *not* recognised as it, the paper's binary "independence"
    assumption). ``m`` is the code's ``--batch-m`` (1 in every published run). Where the
    code differs from the paper it is followed: both views are augmented and play symmetric roles
    (the paper writes one original and one augmented view), ``P`` is normalized over the candidates
    of the anchor's row, and the candidates are detached (``x.t().data``, ``reordered_x.data``): the
    gradient flows through the anchor side of every inner product only (``stop_gradient_candidates``).

    Under torch.distributed the candidates are the embeddings of all ranks (gathered with gradient,
    which only matters with ``stop_gradient_candidates=False``) and ``L_r`` is the mean over this
    rank's 2n anchors, so the mean over ranks is the one-process loss (the official code runs the
    whole batch on one device with DataParallel).

    Args:
        z1, z2: the two views' embeddings (N, D); row i of z1 and row i of z2 are positives.
        temperature: τ (0.1 in the official CIFAR command).
        negative_weight: m, the weight of the negatives in ``D_a`` and in the spreading term.
        stop_gradient_candidates: detach the candidate side of the inner products (the code).
        gather_distributed: use the other ranks' embeddings as candidates (the safe default).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be (N, D) of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0 or negative_weight <= 0:
        raise ValueError(f"temperature and negative_weight must be > 0, got {temperature} and {negative_weight}")
    f1, f2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = f1.shape[0]
    c1, c2 = (f1.detach(), f2.detach()) if stop_gradient_candidates else (f1, f2)
    offset = 0
    if gather_distributed:
        c1, c2 = gather_with_grad(c1), gather_with_grad(c2)
        offset = local_row_offset(n)
    m = c1.shape[0]
    anchors = torch.cat([f1, f2])  # (2n, D)
    candidates = torch.cat([c1, c2])  # (2m, D): view-1 block then view-2 block
    logits = anchors @ candidates.t() / temperature
    local = torch.arange(n, device=f1.device) + offset
    self_index = torch.cat([local, local + m])
    positive_index = torch.cat([local + m, local])
    rows = torch.arange(2 * n, device=f1.device)
    positive = logits[rows, positive_index]
    is_negative = torch.ones_like(logits, dtype=torch.bool)
    is_negative[rows, self_index] = False
    is_negative[rows, positive_index] = False
    negative_logits = logits.masked_fill(~is_negative, float("-inf"))
    # log D_a = logsumexp([s_aa⁺, s_ac + log m for the negatives c])
    log_normalizer = torch.logaddexp(positive, torch.logsumexp(negative_logits, dim=1) + math.log(negative_weight))
    log_p_positive = positive - log_normalizer
    p_negative = torch.exp(negative_logits - log_normalizer[:, None])  # 0 outside the negatives
    spreading = torch.log1p(-p_negative).sum(dim=1)
    return -(log_p_positive + negative_weight * spreading).mean()


class InvariantSpreadingLoss(nn.Module):
    """``InvariantSpreadingLoss(temperature)(z1, z2)``; see :func:`invariant_spreading_loss`."""

    def __init__(
        self,
        temperature: float = 0.1,
        negative_weight: float = 1.0,
        stop_gradient_candidates: bool = True,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.negative_weight = negative_weight
        self.stop_gradient_candidates = stop_gradient_candidates
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return invariant_spreading_loss(
            z1, z2, self.temperature, self.negative_weight, self.stop_gradient_candidates, self.gather_distributed
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, negative_weight={self.negative_weight}"
