"""Split BatchNorm for MoCo's Shuffle-BN, as a backbone transformation.

MoCo v1/v2 were trained on 8 GPUs without SyncBN, so every BatchNorm saw 1/8 of the batch, and the
key encoder's groups were made of shuffled samples (Shuffle-BN). The official CIFAR-10 demo
(facebookresearch/moco, branch ``colab-notebook``, ``SplitBatchNorm``, ``--bn-splits 8``) simulates
this on one GPU by giving each group of the batch its own statistics.
:class:`siamssl.distributed.SplitBatchNorm` does the same with **contiguous** groups (the demo
interleaves them; both are random subsets once the batch order is random), so that one process with
``S`` splits of a batch ``2B`` computes exactly what two processes with ``S/2`` splits of ``B``
compute. The trainer's ``trainer.sync_bn`` conversion leaves it alone, because SyncBN would defeat
its purpose; its state dict loads into a plain BatchNorm model (linear evaluation, transfer).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from siamssl.distributed import SplitBatchNorm

__all__ = ["SplitBatchNorm", "convert_split_batchnorm"]


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm (1d/2d/3d, SyncBatchNorm) in ``module`` by a
    :class:`~siamssl.distributed.SplitBatchNorm` with the same state; returns the module (replaced in
    place, except a bare BatchNorm argument)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SplitBatchNorm):
        return SplitBatchNorm.from_batchnorm(module, num_splits)
    for name, child in module.named_children():
        converted = convert_split_batchnorm(child, num_splits)
        if converted is not child:
            setattr(module, name, converted)
    return module
