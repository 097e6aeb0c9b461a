"""SwAV: swapped prediction of codes that Sinkhorn-Knopp computes online."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import all_reduce_max, all_reduce_sum, world_size
from siamssl.losses._precision import float32_loss


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, gather_distributed: bool = True) -> Tensor:
    """Soft codes with equal partition over the prototypes (Caron et al., NeurIPS 2020, Eq. 3-4),
    as ``distributed_sinkhorn`` in facebookresearch/swav ``main_swav.py``:

        Q = exp(scores / ε)ᵀ                       (K × B, the B samples spread over the ranks)
        Q ← Q / ΣQ
        repeat ``iterations`` times:
            each row    ← row / (K · row sum)       (row sums all-reduced: prototypes see every rank)
            each column ← column / (B · column sum)
        return B · Qᵀ                              (B × K, each sample's code sums to 1)

    ``B`` is the number of rows of ``scores`` (batch plus queue) times the world size, so the
    equipartition is over the global batch. The exponent is shifted by the global maximum score,
    which the first normalization cancels exactly; it only keeps ``exp`` finite for scores that are
    not cosines. Computed in float32 (or float64 for float64 input) with autocast disabled.

    Args:
        scores: (B, K) similarities between samples and prototypes (cosines in SwAV).
        epsilon: ε, the entropic regularization (0.05). iterations: Sinkhorn iterations (3).
        gather_distributed: normalize over all ranks (the safe default).
    """
    reduce_sum = all_reduce_sum if gather_distributed else (lambda x: x)
    samples = scores.shape[0] * (world_size() if gather_distributed else 1)
    prototypes = scores.shape[1]
    with torch.autocast(device_type=scores.device.type, enabled=False):
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        shift = scores.max()
        if gather_distributed:
            shift = all_reduce_max(shift.clone())
        q = torch.exp((scores - shift) / epsilon).t()
        q /= reduce_sum(q.sum())
        for _ in range(iterations):
            q /= reduce_sum(q.sum(dim=1, keepdim=True))
            q /= prototypes
            q /= q.sum(dim=0, keepdim=True)
            q /= samples
        return (q * samples).t()


@float32_loss
def swav_loss(scores: Tensor, codes: Tensor, assign_crops: Sequence[int], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction (facebookresearch/swav ``main_swav.py``):

        p_v = softmax(scores_v / τ)
        L = 1/A Σ_a 1/(V − 1) Σ_{v ≠ c_a} mean_b [ −Σ_k q_a[b, k] log p_v[b, k] ]

    where crop ``c_a = assign_crops[a]`` produced the codes ``q_a`` (no gradient flows into them).
    Each rank averages over its own samples; the codes already carry the global equipartition.

    Args:
        scores: (V, B, K) prototype scores of every crop (same-sized batches, crops in order).
        codes: (A, B, K) Sinkhorn codes of the assignment crops, e.g. the two large crops.
        assign_crops: the crop index behind each code, e.g. ``(0, 1)``.
        temperature: τ (0.1).
    """
    num_crops, batch = scores.shape[0], scores.shape[1]
    if num_crops < 2:
        raise ValueError(f"SwAV needs at least 2 crops, got {num_crops}")
    if codes.shape[0] != len(assign_crops) or codes.shape[1:] != scores.shape[1:]:
        raise ValueError(f"codes of shape {tuple(codes.shape)} do not match {len(assign_crops)} crops of {tuple(scores.shape[1:])}")
    if any(not 0 <= c < num_crops for c in assign_crops):
        raise ValueError(f"assign_crops {list(assign_crops)} must index the {num_crops} crops")
    log_p = F.log_softmax(scores / temperature, dim=-1)
    # cross_entropy[a, v] = mean_b −Σ_k q_a[b, k] log p_v[b, k]
    cross_entropy = -torch.einsum("abk,vbk->av", codes.detach(), log_p) / batch
    # the mask of each code's own crop is built from host indices (fills, no host-to-device copy)
    own_crop = torch.zeros_like(cross_entropy, dtype=torch.bool)
    for a, crop in enumerate(assign_crops):
        own_crop[a, crop] = True
    return cross_entropy.masked_fill(own_crop, 0.0).sum() / ((num_crops - 1) * len(assign_crops))


class SwAVLoss(nn.Module):
    """``SwAVLoss(temperature=0.1)(scores, codes, assign_crops)``; see :func:`swav_loss` and
    :func:`sinkhorn_knopp` for the codes."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, scores: Tensor, codes: Tensor, assign_crops: Sequence[int]) -> Tensor:
        return swav_loss(scores, codes, assign_crops, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
