"""CPC's InfoNCE over a grid of patch codes: predictions k rows ahead against every patch of the batch."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import gather_with_grad, local_row_offset
from siamssl.losses._precision import float32_loss


@float32_loss
def cpc_loss(predictions: Tensor, targets: Tensor, offsets: Sequence[int], gather_distributed: bool = True) -> Tensor:
    """Contrastive Predictive Coding on images (van den Oord, Li, Vinyals, "Representation Learning
    with Contrastive Predictive Coding", 2018, Eq. 4; the image version of Hénaff et al.,
    "Data-Efficient Image Recognition with Contrastive Predictive Coding", ICML 2020, §2 and
    the ``CPC`` function of its appendix pseudocode, which this follows):

        ℓ_k(b, i, j) = −log( exp(ẑ^k_{b,i,j} · z_{b,i+k,j}) / Σ_{l ∈ all patches} exp(ẑ^k_{b,i,j} · z_l) )
        L = Σ_{k ∈ offsets} mean_{b, i < H−k, j} ℓ_k(b, i, j)

    ``ẑ^k_{b,i,j} = W_k c_{b,i,j}`` is the prediction made from the context of row ``i`` for the
    patch ``k`` rows below; the candidates ``z_l`` are the target codes of *every* patch of every
    image of the (global) batch: the other rows and columns of the same image and all patches of the
    other images (the pseudocode's ``matmul(preds_i, targets, transp_b=True)``). Scores are plain
    dot products (no normalization, no temperature; the pseudocode scales the predictions by
    ``emb_scale = 0.1``, which belongs to the method). Each offset's cross-entropy is averaged over
    its valid positions and the offsets are summed (``loss += cross_entropy(...)``).

    Under torch.distributed the targets of all ranks are gathered with gradient and each rank
    averages over its own predictions; every rank holds the same number of predictions, so the mean
    over ranks is the one-process loss.

    Args:
        predictions: (K, B, H, W, D); ``predictions[n, b, i, j]`` predicts ``targets[b, i + offsets[n], j]``.
            Rows ``i ≥ H − offsets[n]`` have no target and are ignored.
        targets: (B, H, W, D), the target codes of the patch grid.
        offsets: the K prediction lengths k ≥ 1 (rows ahead), each < H.
        gather_distributed: use the other ranks' patches as negatives (the safe default).
    """
    if predictions.dim() != 5 or targets.dim() != 4 or predictions.shape[1:] != targets.shape:
        raise ValueError(
            f"predictions must be (K, B, H, W, D) and targets (B, H, W, D) with the same B, H, W, D; "
            f"got {tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    batch, height, width, dim = targets.shape
    if len(offsets) != predictions.shape[0] or any(not 1 <= k < height for k in offsets):
        raise ValueError(f"offsets {list(offsets)} must be {predictions.shape[0]} row offsets in [1, {height - 1}]")
    candidates = targets.reshape(-1, dim)
    first = 0
    if gather_distributed:
        candidates = gather_with_grad(candidates)
        first = local_row_offset(batch * height * width)
    image = torch.arange(batch, device=targets.device).view(batch, 1, 1)
    column = torch.arange(width, device=targets.device).view(1, 1, width)
    total = targets.new_zeros(())
    for n, k in enumerate(offsets):
        rows = height - k
        queries = predictions[n, :, :rows].reshape(-1, dim)
        row = torch.arange(rows, device=targets.device).view(1, rows, 1)
        labels = (first + image * height * width + (row + k) * width + column).reshape(-1)
        total = total + F.cross_entropy(queries @ candidates.t(), labels)
    return total


class CPCLoss(nn.Module):
    """``CPCLoss(offsets)(predictions, targets)``; see :func:`cpc_loss`."""

    def __init__(self, offsets: Sequence[int], gather_distributed: bool = True) -> None:
        super().__init__()
        self.offsets = tuple(int(k) for k in offsets)
        self.gather_distributed = gather_distributed

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return cpc_loss(predictions, targets, self.offsets, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"offsets={self.offsets}"
