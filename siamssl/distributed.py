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

:class:`SyncBatchNorm` follows the same rule: its statistics are those of the global batch, computed
with :func:`gather_with_grad`, so 2 processes × B normalize exactly as 1 process × 2B. It works with
every backend (``torch.nn.SyncBatchNorm`` refuses CPU tensors, hence gloo) and never reads a device
value on the host; :func:`convert_sync_batchnorm` uses it on every device.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


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


@torch.no_grad()
def broadcast_from_first_rank(x: Tensor) -> Tensor:
    """In-place: every rank gets rank 0's ``x`` (a device-side collective, nothing read on the host)."""
    if is_distributed():
        dist.broadcast(x, src=0)
    return x


def host_to_device(x: Tensor, device: torch.device) -> Tensor:
    """Copy a small host tensor to ``device`` without making the host wait: through pinned memory and
    ``non_blocking`` on CUDA (a copy from pageable memory blocks until the device has it)."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def local_row_offset(local_rows: int) -> int:
    """Index of this rank's first row in a gathered tensor (for in-batch contrastive labels)."""
    return rank() * local_rows


@torch.no_grad()
def shuffle_across_ranks(x: Tensor) -> tuple[Tensor, Tensor]:
    """First half of MoCo's Shuffle-BN (He et al., CVPR 2020, §3.3; facebookresearch/moco
    ``_batch_shuffle_ddp``): gather ``x`` (no gradient), permute the global batch with one
    permutation drawn on rank 0 and broadcast, and return this rank's slice of the shuffled batch
    with the permutation. The key encoder's per-process BatchNorm then sees a random subset of the
    global batch, so the statistics cannot leak which key is the query's positive.

    With one process it permutes the local batch; pair it with :class:`SplitBatchNorm` to reproduce
    W processes on one (see docs/DISTRIBUTED.md). Undo with :func:`unshuffle_across_ranks`.
    """
    gathered = gather_no_grad(x)
    permutation = torch.randperm(gathered.shape[0], device=x.device)
    if is_distributed():
        dist.broadcast(permutation, src=0)
    local = gathered.shape[0] // world_size()
    return gathered[permutation.view(world_size(), local)[rank()]], permutation


@torch.no_grad()
def unshuffle_across_ranks(y: Tensor, permutation: Tensor) -> Tensor:
    """Second half of Shuffle-BN: gather the outputs computed on the shuffled slices, restore the
    original order of the global batch and return this rank's rows (``_batch_unshuffle_ddp``)."""
    gathered = gather_no_grad(y)
    restored = gathered[torch.argsort(permutation)]
    local = restored.shape[0] // world_size()
    return restored[rank() * local : (rank() + 1) * local]


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes, for any backend and device (gloo on CPU too).

    In training mode with more than one process, each rank computes its per-channel mean and sum of
    squared deviations ``M2`` in float32; one differentiable gather combines them with the parallel
    variance formula (Chan et al., 1979), which is as stable as two passes over the whole batch:

        N = Σ_r n_r,   μ = Σ_r n_r μ_r / N,   σ² = Σ_r [M2_r + n_r (μ_r - μ)²] / N

    and the running statistics are updated with the unbiased ``σ² N/(N-1)``, as ``nn.BatchNorm``
    does on the concatenated batch. The gather's backward sums gradients over ranks (see the module
    docstring), so with DDP averaging, gradients equal those of one process on the whole batch. In
    evaluation mode, or without a process group, it is ``nn.BatchNorm``. Accepts (N, C), (N, C, L),
    (N, C, H, W) and (N, C, D, H, W) inputs; the output has the input's dtype.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        reduce_dims = [0] + list(range(2, input.dim()))
        x = input.float()
        local_count = input.numel() // input.shape[1]
        local_mean = x.mean(dim=reduce_dims)
        local_m2 = (x - _channel_view(local_mean, input.dim())).pow(2).sum(dim=reduce_dims)
        count_column = torch.full((1,), float(local_count), device=input.device)
        stats = gather_with_grad(torch.cat([local_mean, local_m2, count_column]).unsqueeze(0))
        means, m2s, counts = stats[:, : self.num_features], stats[:, self.num_features : -1], stats[:, -1:].detach()
        total = counts.sum()
        mean = (counts * means).sum(dim=0) / total
        var = (m2s + counts * (means - mean).pow(2)).sum(dim=0) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running_stats(mean.detach(), var.detach(), total)
        shape_dims = input.dim()
        out = (x - _channel_view(mean, shape_dims)) * _channel_view(torch.rsqrt(var + self.eps), shape_dims)
        if self.weight is not None:
            out = out * _channel_view(self.weight.float(), shape_dims)
        if self.bias is not None:
            out = out + _channel_view(self.bias.float(), shape_dims)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Momentum update with the unbiased variance; ``count`` (the global batch's values per
        channel) stays on the device: nothing here reads a device value on the host."""
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = (1.0 / self.num_batches_tracked.float()) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1.0).clamp(min=1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm that normalizes ``num_splits`` contiguous chunks of the batch separately: what
    ``num_splits`` processes with per-process BatchNorm compute, on one process (the single-GPU
    stand-in for MoCo's per-GPU BN, as in the MoCo CIFAR demo's ``SplitBatchNorm``).

    Training outputs and gradients equal those of ``num_splits`` ranks each running
    ``nn.BatchNorm`` on its chunk; the running statistics are updated with the mean over chunks of
    the per-chunk statistics. Under torch.distributed each rank updates its own copy;
    :func:`average_split_batchnorm_statistics_` (once per step, one all-reduce for all layers) makes
    W processes with ``S`` splits each hold the running statistics of one process with ``W·S`` splits
    (the official MoCo code keeps rank 0's instead; the checkpoint then depends on the world size).
    Evaluation mode uses the running statistics like ``nn.BatchNorm``. Not converted by
    :func:`convert_sync_batchnorm`; its state dict loads into a plain BatchNorm.
    """

    def __init__(self, num_features: int, num_splits: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, num_splits: int) -> "SplitBatchNorm":
        """A SplitBatchNorm with ``bn``'s parameters, running statistics and hyper-parameters."""
        if not bn.track_running_stats:
            raise ValueError("SplitBatchNorm needs a BatchNorm that tracks running statistics")
        split = cls(bn.num_features, num_splits, bn.eps, bn.momentum, bn.affine)
        split = split.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        split.load_state_dict(bn.state_dict())
        if bn.affine:
            split.weight.requires_grad_(bn.weight.requires_grad)
            split.bias.requires_grad_(bn.bias.requires_grad)
        return split

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        n, c = input.shape[0], input.shape[1]
        if n % self.num_splits:
            raise ValueError(f"batch of {n} does not split into {self.num_splits} equal chunks")
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        rest = input.shape[2:]
        channels_last = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
        if channels_last:  # fold NHWC as (positions, splits × C): the output stays channels_last, no extra copy
            positions = (n // self.num_splits) * rest[0] * rest[1]
            folded = input.permute(0, 2, 3, 1).reshape(self.num_splits, positions, c).transpose(0, 1)
            folded = folded.reshape(positions, self.num_splits * c)
        else:
            # chunk s of the batch becomes channels [s·C, (s+1)·C): one batch_norm call, per-chunk statistics
            folded = input.reshape(self.num_splits, n // self.num_splits, c, *rest).transpose(0, 1)
            folded = folded.reshape(n // self.num_splits, self.num_splits * c, *rest)
        running_mean = self.running_mean.repeat(self.num_splits)
        running_var = self.running_var.repeat(self.num_splits)
        weight = self.weight.repeat(self.num_splits) if self.weight is not None else None
        bias = self.bias.repeat(self.num_splits) if self.bias is not None else None
        out = F.batch_norm(folded, running_mean, running_var, weight, bias, True, factor, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(self.num_splits, c).mean(dim=0))
            self.running_var.copy_(running_var.view(self.num_splits, c).mean(dim=0))
        if channels_last:
            out = out.reshape(positions, self.num_splits, c).transpose(0, 1)
            return out.reshape(n, rest[0], rest[1], c).permute(0, 3, 1, 2)
        out = out.reshape(n // self.num_splits, self.num_splits, c, *rest).transpose(0, 1)
        return out.reshape(input.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"


@torch.no_grad()
def average_split_batchnorm_statistics_(module: nn.Module) -> None:
    """Average the running statistics of every :class:`SplitBatchNorm` in ``module`` over ranks, in
    one all-reduce. Exact whenever it is called: the momentum update is linear and every rank
    applies it with the same factor, so the mean of the ranks' statistics is the statistics one
    process would have kept. No-op without a process group."""
    if not is_distributed():
        return
    layers = [m for m in module.modules() if isinstance(m, SplitBatchNorm)]
    if not layers:
        return
    flat = torch.cat([torch.cat([m.running_mean, m.running_var]) for m in layers])
    all_reduce_mean(flat)
    offset = 0
    for m in layers:
        m.running_mean.copy_(flat[offset : offset + m.num_features])
        m.running_var.copy_(flat[offset + m.num_features : offset + 2 * m.num_features])
        offset += 2 * m.num_features


def _channel_view(values: Tensor, dims: int) -> Tensor:
    return values.view(1, -1, *([1] * (dims - 2)))


_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(module: nn.Module, device: Optional[torch.device] = None) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` by :class:`SyncBatchNorm`, sharing its
    parameters and buffers, on every device. (``torch.nn.SyncBatchNorm`` is not used on CUDA: its
    forward reads the per-rank counts on the host in every layer, a synchronization per BatchNorm
    per step that also breaks ``torch.compile`` graphs; here the counts stay on the device.) Only
    these exact classes are converted: a subclass (a split or ghost BatchNorm, say) defines its own
    statistics on purpose and is kept. A BatchNorm reachable through several paths becomes one
    synchronized module, so sharing is preserved. ``device`` is accepted for compatibility and unused.
    """
    converted: dict[int, nn.Module] = {}

    def convert(child: nn.Module) -> nn.Module:
        if type(child) not in _PLAIN_BATCHNORMS:
            return child
        if id(child) not in converted:
            new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            converted[id(child)] = new
        return converted[id(child)]

    root = convert(module)
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            replacement = convert(child)
            if replacement is not child:
                setattr(parent, name, replacement)
    return root
