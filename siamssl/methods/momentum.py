"""Momentum (EMA) targets shared by BYOL, MoCo, DINO, UniGrad...

Only parameters are averaged: BatchNorm running statistics of a target are updated by its own
forward passes, as in the MoCo v3, DINO and BYOL code. The update runs after the optimizer step.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A frozen copy of ``online`` (same weights, no gradients) to be moved by :func:`ema_update_`."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """ξ ← τ·ξ + (1 − τ)·θ for every parameter pair (buffers untouched)."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks have different parameter lists")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """τ_k = final − (final − τ_base)(cos(πk/K) + 1)/2: τ_base at k=0, rising to ``final`` at k=K
    (BYOL ``schedules.target_ema``; MoCo v3 ``adjust_moco_momentum``; DINO's teacher momentum)."""
    return final - (final - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1.0) / 2.0
