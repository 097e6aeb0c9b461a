"""InfoNCE with a negative bank (MoCo v1/v2) or with in-batch negatives (MoCo v3)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import gather_with_grad, local_row_offset
from siamssl.losses._precision import float32_loss


@float32_loss
def info_nce(
    q: Tensor,
    k: Tensor,
    negatives: Optional[Tensor] = None,
    temperature: float = 0.07,
    gather_distributed: bool = True,
) -> Tensor:
    """InfoNCE: ``-mean_i log( exp(u_i·v_i/τ) / Σ_{c ∈ C_i} exp(u_i·c/τ) )`` with ``u = q/||q||``,
    ``v = k/||k||``.

    Row ``i`` of ``k`` is the positive of row ``i`` of ``q``. The candidates ``C_i`` are:

    * with ``negatives`` (a (K, D) bank, e.g. MoCo's queue): ``{v_i} ∪ bank`` — logits
      ``[u_i·v_i, u_i·bank^T] / τ`` with label 0, as in MoCo (He et al., CVPR 2020, Eq. 1;
      facebookresearch/moco ``builder.py``);
    * without: every row of ``k`` — the positive and the other keys of the batch (MoCo v3, Chen et
      al., ICCV 2021, Alg. 1; facebookresearch/moco-v3 ``contrastive_loss``). Under torch.distributed
      the keys of all ranks are gathered (with gradient, in case ``k`` carries one) and the labels are
      offset by this rank's position, so the negatives are the global batch.

    MoCo v3 multiplies this loss by ``2τ``; that scale belongs to the method, not to this function.
    Inputs are l2-normalized here and the logits computed in float32.

    Args:
        q: queries (N, D); k: keys (N, D); negatives: optional bank (K, D).
        temperature: τ.
        gather_distributed: gather in-batch negatives over ranks (the safe default).
    """
    u = F.normalize(q, dim=1)
    v = F.normalize(k, dim=1)
    if negatives is not None:
        bank = F.normalize(negatives, dim=1)
        positive = (u * v).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, u @ bank.t()], dim=1) / temperature
        labels = torch.zeros(u.shape[0], dtype=torch.long, device=u.device)
        return F.cross_entropy(logits, labels)
    offset = 0
    if gather_distributed:
        v = gather_with_grad(v)
        offset = local_row_offset(u.shape[0])
    logits = u @ v.t() / temperature
    labels = torch.arange(u.shape[0], device=u.device) + offset
    return F.cross_entropy(logits, labels)


class InfoNCELoss(nn.Module):
    """``InfoNCELoss(temperature)(q, k, negatives=None)``; see :func:`info_nce`."""

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, q: Tensor, k: Tensor, negatives: Optional[Tensor] = None) -> Tensor:
        return info_nce(q, k, negatives, self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
