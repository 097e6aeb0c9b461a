"""Evaluation work split over the processes of a ``torchrun`` job.

An evaluation during training (kNN memory bank, diagnostics, the online probe's test accuracy) runs
on every rank: each rank embeds a contiguous slice of the evaluated images (:func:`shard_split`),
then the features are gathered where every row is needed (:func:`gather_rows`, a kNN bank) or only
counts are summed (test-set accuracy). W ranks thus extract W times faster than rank 0 alone, and
no rank waits at a barrier for minutes (which NCCL's collective timeout would turn into a crash).

Slices are ``ceil(N/W)`` rows each, the last shorter, so the gathered rows are the concatenation in
split order: the features one process computes, in the same order. When N is so small that a rank
would get nothing, every rank takes the whole split (no gather needed). Every function is the
identity without a process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from siamssl.data.datasets import ImageSplit
from siamssl.distributed import is_distributed, rank, world_size


def shard_bounds(total: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``total`` taken by ``shard`` of ``shards`` (all of them when some
    shard would be empty)."""
    per = -(-total // shards) if shards > 0 else total
    if shards <= 1 or (shards - 1) * per >= total:
        return 0, total
    return shard * per, min(total, (shard + 1) * per)


def is_sharded(total: int) -> bool:
    """Whether ``total`` rows are split over the ranks (False without a process group)."""
    return is_distributed() and shard_bounds(total, 0, world_size()) != (0, total)


def shard_split(split: ImageSplit) -> ImageSplit:
    """This rank's contiguous slice of ``split`` (the whole split without a process group)."""
    total = len(split)
    if not is_sharded(total):
        return split
    start, stop = shard_bounds(total, rank(), world_size())
    return ImageSplit(
        labels=split.labels[start:stop],
        images=None if split.images is None else split.images[start:stop],
        paths=None if split.paths is None else split.paths[start:stop],
    )


@torch.no_grad()
def gather_rows(local: Tensor, total: int) -> Tensor:
    """Every rank's slice (as cut by :func:`shard_split` from ``total`` rows) concatenated in rank
    order: the (total, ...) tensor, on every rank. One collective; ``local`` itself when the rows
    were not sharded."""
    if not is_sharded(total):
        return local
    per = -(-total // world_size())
    padded = local
    if local.shape[0] < per:
        padded = torch.cat([local, local.new_zeros((per - local.shape[0], *local.shape[1:]))])
    padded = padded.contiguous()
    if dist.get_backend() == "nccl":  # one buffer, no list of W copies
        out = local.new_empty((per * world_size(), *local.shape[1:]))
        dist.all_gather_into_tensor(out, padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(parts, padded)
        out = torch.cat(parts)
    return out[:total]  # only the last non-empty slice may be short, so the padding is all at the end
