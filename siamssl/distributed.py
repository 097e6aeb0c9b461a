"""Collectives that make a multi-process run compute the same gradients as one process.

Convention used everywhere in siamssl: each rank computes a loss ``L_r`` such that the mean of
``L_r`` over ranks equals the loss of one process on the whole batch (a loss that already sees the
global batch is simply identical on every rank). DistributedDataParallel then averages parameter
gradients over ranks. For that average to be exact, every differentiable collective below returns,
in its backward pass, the **sum over ranks** of the incoming gradients (restricted to this rank's
slice for a gather). Written out for a gather ``Z = [z_0; ...; z_{W-1}]``:

    dL/dθ = 1/W Σ_r dL_r/dθ = 1/W Σ_s (Σ_r ∂L_r/∂z_s) ∂z_s/∂θ ,

and ``Σ_r ∂L_r/∂z_s`` is exactly what rank ``s`` receives from the all-reduce in the backward.
(This is the rule of VICReg's ``FullGatherLayer``; a gather whose backward only keeps the local
gradient silently scales or drops the cross-rank terms.)

Every function is the identity when torch.distributed is not initialized or the world has one process,
so the same loss code runs in a notebook, a unit test and under ``torchrun``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when torch.distributed is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.local_size = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_size
        return grad[start : start + ctx.local_size]


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, keeping the gradient.

    Row block ``r`` of the result is rank ``r``'s tensor. Backward: the all-reduced (summed)
    gradient of this rank's block.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks, keeping the gradient (backward: the summed incoming gradients)."""
    if not is_distributed():
        return x
    return _AllReduceSumWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` over ranks along dim 0 for tensors that need no gradient (keys, queue items)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """In-place sum over ranks of a tensor that needs no gradient; returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """In-place mean over ranks of a tensor that needs no gradient; returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


@torch.no_grad()
def all_reduce_max(x: Tensor) -> Tensor:
    """In-place maximum over ranks of a tensor that needs no gradient; returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def local_row_offset(local_rows: int) -> int:
    """Index of this rank's first row in a gathered tensor (for in-batch contrastive labels)."""
    return rank() * local_rows
