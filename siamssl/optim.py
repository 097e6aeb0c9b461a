"""Optimizers (SGD, LARS, AdamW, Adam) built from a method's parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim import Optimizer

from siamssl.methods.base import ParamGroup


class LARS(Optimizer):
    """LARS (You et al., 2017) as in the Barlow Twins / VICReg / MoCo v3 code:

        g ← g + wd·w;   g ← g · η‖w‖/‖g‖ (1 when either norm is 0);   μ ← m·μ + g;   w ← w − lr·μ

    Groups with ``lars_adapt=False`` skip the trust ratio (and get ``weight_decay=0`` from the
    builder when biases and norm parameters are excluded).

    ``clip=True`` is LARC's clipping (apex ``LARC(clip=True)``; solo-learn's ``clip_lr``): the trust
    ratio becomes ``min(trust / lr, 1)``, so an adapted step never exceeds the plain SGD step at the
    scheduled rate (1 while ``lr`` is 0).

    Apex LARC with ``clip=False`` (SwAV) uses ``η‖w‖/(‖g‖ + wd‖w‖)`` where this uses
    ``η‖w‖/‖g + wd·w‖``: the two agree to within ``2·wd‖w‖/‖g‖`` relative (about 1e-3 at SwAV's
    wd 1e-6), so ``name: lars`` with ``exclude_bias_and_norm: false`` stands in for it.
    """

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001, clip: bool = False
    ) -> None:
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_adapt=True, lars_clip=clip)
        )

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One step for every parameter of a group at once (``torch._foreach_*``): the same
        operations, in the same order, as the per-parameter rule above, in a handful of kernel
        launches per group and without reading anything back to the host."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["lars_adapt"]:
                param_norms = torch.stack(torch._foreach_norm(params))
                grad_norms = torch.stack(torch._foreach_norm(grads))
                trust = torch.where(
                    (param_norms > 0) & (grad_norms > 0), group["eta"] * param_norms / grad_norms, torch.ones_like(param_norms)
                )
                if group["lars_clip"]:
                    trust = trust.div(group["lr"]).clamp(max=1.0) if group["lr"] > 0 else torch.ones_like(trust)
                grads = torch._foreach_mul(grads, list(trust.unbind(0)))
            buffers, updates = [], []
            for p, grad in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:  # first step: the buffer starts at the update itself
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    buffers.append(state["momentum_buffer"])
                    updates.append(grad)
            if buffers:
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])
        return loss


def peak_learning_rate(base_lr: float, global_batch_size: int, scaling: str) -> float:
    """``base_lr × batch/256`` for linear scaling, else ``base_lr``."""
    return base_lr * global_batch_size / 256 if scaling == "linear" else base_lr


def build_optimizer(groups: list[ParamGroup], cfg, peak_lr: float) -> Optimizer:
    """One optimizer param group per (method group × decayed / not decayed) with schedule metadata:
    ``peak_lr`` (this group's unscheduled rate), ``fixed_lr`` and ``scheduled_weight_decay`` (the group
    decays at the optimizer's ``weight_decay``, so ``weight_decay_end`` schedules it)."""
    exclude = cfg.exclude_bias_and_norm if cfg.exclude_bias_and_norm is not None else cfg.name == "lars"
    torch_groups = []
    for group in groups:
        weight_decay = cfg.weight_decay if group.weight_decay is None else group.weight_decay
        lr = peak_lr * group.lr_scale
        matrices = [p for p in group.params if p.ndim > 1]
        vectors = [p for p in group.params if p.ndim <= 1]
        parts = [(matrices, True), (vectors, False)] if exclude else [(matrices + vectors, True)]
        for params, is_matrix in parts:
            if not params:
                continue
            torch_groups.append(
                dict(
                    params=params,
                    name=group.name if not exclude else f"{group.name}/{'weights' if is_matrix else 'bias_norm'}",
                    lr=lr,
                    peak_lr=lr,
                    fixed_lr=group.fixed_lr,
                    weight_decay=weight_decay if is_matrix else 0.0,
                    scheduled_weight_decay=is_matrix and group.weight_decay is None,
                    lars_adapt=is_matrix and not group.exclude_from_lars,
                )
            )
    # Multi-tensor (foreach) updates: a few kernels per group instead of several per parameter.
    # AdamW's fused kernel needs every parameter on a GPU.
    if cfg.name == "sgd":
        return torch.optim.SGD(
            torch_groups, lr=peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, foreach=True
        )
    if cfg.name == "lars":
        return LARS(
            torch_groups, lr=peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta, clip=cfg.lars_clip
        )
    on_gpu = all(p.is_cuda for group in torch_groups for p in group["params"])
    adam = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return adam(
        torch_groups, lr=peak_lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **({"fused": True} if on_gpu else {"foreach": True})
    )


def schedule_factor(step: int, total_steps: int, steps_per_epoch: int, cfg) -> float:
    """Multiplier of the peak rate at ``step``: linear warmup from ``warmup_start_ratio`` over
    ``warmup_epochs``, then cosine down to ``min_lr_ratio``, constant, or ``step_gamma`` per passed
    epoch milestone."""
    if cfg.schedule_unit == "epoch":
        step = (step // steps_per_epoch) * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.warmup_start_ratio + (1.0 - cfg.warmup_start_ratio) * step / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.step_gamma ** sum(epoch >= milestone for milestone in cfg.step_milestones)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rates(optimizer: Optimizer, factor: float) -> None:
    """Scheduled groups get ``peak_lr × factor``; fixed groups keep ``peak_lr``."""
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] if group["fixed_lr"] else group["peak_lr"] * factor


def weight_decay_at(step: int, total_steps: int, cfg) -> float:
    """Weight decay at ``step`` when ``weight_decay_end`` is set: a cosine from ``weight_decay`` (step 0)
    to ``weight_decay_end`` (step ``total_steps``), DINO's ``cosine_scheduler(weight_decay,
    weight_decay_end, epochs, iters_per_epoch)``; ``weight_decay`` itself otherwise."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    progress = min(1.0, step / max(1, total_steps))
    return cfg.weight_decay_end + (cfg.weight_decay - cfg.weight_decay_end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_weight_decays(optimizer: Optimizer, weight_decay: float) -> None:
    """Groups that decay at the optimizer's rate (``scheduled_weight_decay``) get ``weight_decay``."""
    for group in optimizer.param_groups:
        if group.get("scheduled_weight_decay", False):
            group["weight_decay"] = weight_decay
