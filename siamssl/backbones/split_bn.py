"""Split BatchNorm: BatchNorm statistics computed over groups of the batch (MoCo's Shuffle-BN).

MoCo v1/v2 were trained on 8 GPUs without SyncBN, so every BatchNorm saw 1/8 of the batch, and the
key encoder's groups were made of shuffled samples (Shuffle-BN). The official CIFAR-10 demo
(facebookresearch/moco, branch ``colab-notebook``, ``SplitBatchNorm``, ``--bn-splits 8``) simulates
this on one GPU by giving each group of the batch its own statistics. :class:`SplitBatchNorm` does
the same with **contiguous** groups (the demo interleaves them; both are random subsets once the
batch order is random), so that one process with ``S`` splits of a batch ``2B`` computes exactly
what two processes with ``S/2`` splits of ``B`` compute.

:class:`SplitBatchNorm` is deliberately not a subclass of ``nn.BatchNorm*``:
``nn.SyncBatchNorm.convert_sync_batchnorm`` (the trainer's ``trainer.sync_bn``) leaves it alone,
because SyncBN would defeat its purpose. Its parameter and buffer names are BatchNorm's, so its
state dict loads into a plain BatchNorm model (linear evaluation, transfer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class SplitBatchNorm(nn.Module):
    """BatchNorm whose training-mode statistics are computed separately over ``num_splits``
    contiguous, equal groups of the batch; in eval mode it is a plain BatchNorm.

    Running statistics: each group updates its own copy of the running mean/variance with the usual
    momentum rule (unbiased variance), and the copies are averaged — the rule of the MoCo demo.
    Works for (N, C) and (N, C, *spatial) inputs.
    """

    def __init__(self, num_features: int, num_splits: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_features, self.num_splits, self.eps, self.momentum = num_features, num_splits, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, num_splits: int) -> "SplitBatchNorm":
        """A SplitBatchNorm with ``bn``'s parameters, statistics and hyper-parameters."""
        if not bn.track_running_stats:
            raise ValueError("SplitBatchNorm needs a BatchNorm that tracks running statistics")
        split = cls(bn.num_features, num_splits, bn.eps, bn.momentum if bn.momentum is not None else 0.1, bn.affine)
        split = split.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        with torch.no_grad():
            split.running_mean.copy_(bn.running_mean)
            split.running_var.copy_(bn.running_var)
            split.num_batches_tracked.copy_(bn.num_batches_tracked)
            if bn.affine:
                split.weight.copy_(bn.weight)
                split.bias.copy_(bn.bias)
                split.weight.requires_grad_(bn.weight.requires_grad)
                split.bias.requires_grad_(bn.bias.requires_grad)
        return split

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        splits = self.num_splits
        n, c = x.shape[0], x.shape[1]
        if n % splits:
            raise ValueError(f"SplitBatchNorm: a batch of {n} cannot be split into {splits} equal groups")
        rest = x.shape[2:]
        # (S·n, C, *) -> (n, S·C, *): group s becomes channels [s·C, (s+1)·C) of one BatchNorm call.
        grouped = x.reshape(splits, n // splits, c, *rest).transpose(0, 1).reshape(n // splits, splits * c, *rest)
        running_mean = self.running_mean.repeat(splits)
        running_var = self.running_var.repeat(splits)
        weight = self.weight.repeat(splits) if self.weight is not None else None
        bias = self.bias.repeat(splits) if self.bias is not None else None
        out = F.batch_norm(grouped, running_mean, running_var, weight, bias, True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(splits, c).mean(dim=0))
            self.running_var.copy_(running_var.view(splits, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out.reshape(n // splits, splits, c, *rest).transpose(0, 1).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_splits={self.num_splits}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm (1d/2d/3d, SyncBatchNorm) in ``module`` by a :class:`SplitBatchNorm`
    with the same state; returns the module (replaced in place, except a bare BatchNorm argument)."""
    if isinstance(module, _BatchNorm):
        return SplitBatchNorm.from_batchnorm(module, num_splits)
    for name, child in module.named_children():
        converted = convert_split_batchnorm(child, num_splits)
        if converted is not child:
            setattr(module, name, converted)
    return module
