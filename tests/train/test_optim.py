"""The multi-tensor LARS computes exactly what the per-parameter rule computes."""

from __future__ import annotations

import torch
from torch import nn

from siamssl.methods.base import ParamGroup
from siamssl.train.config import OptimConfig
from siamssl.train.optim import LARS, build_optimizer


@torch.no_grad()
def reference_lars_step(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The per-parameter LARS (Barlow Twins / VICReg code), one parameter at a time."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if group["weight_decay"]:
                grad = grad.add(p, alpha=group["weight_decay"])
            if group["lars_adapt"]:
                param_norm, grad_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                trust = torch.where((param_norm > 0) & (grad_norm > 0), group["eta"] * param_norm / grad_norm, torch.ones_like(param_norm))
                grad = grad.mul(trust)
            if p not in state:
                state[p] = torch.clone(grad)
            else:
                state[p].mul_(group["momentum"]).add_(grad)
            p.add_(state[p], alpha=-group["lr"])


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 3, bias=False))
    nn.init.zeros_(model[3].weight)  # a zero parameter: trust ratio 1 (‖w‖ = 0)
    model[4].weight.requires_grad_(False)  # never gets a gradient
    return model


def lars_for(model: nn.Module) -> LARS:
    groups = [ParamGroup("body", [p for p in model[:3].parameters()]), ParamGroup("head", list(model[3:].parameters()), exclude_from_lars=True)]
    cfg = OptimConfig(name="lars", weight_decay=1e-2, lars_eta=0.02)
    optimizer = build_optimizer(groups, cfg, peak_lr=0.5)
    assert isinstance(optimizer, LARS)
    return optimizer


def test_foreach_lars_equals_per_parameter_lars():
    models = [make_model(0), make_model(0)]
    optimizers = [lars_for(m) for m in models]
    reference_state: dict = {}
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(16, 6, generator=generator)
        for model in models:
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            if step == 2:  # a step where one parameter has no gradient: it must stay untouched
                model[0].bias.grad = None
        optimizers[0].step()
        reference_lars_step(optimizers[1], reference_state)
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            assert torch.equal(a, b), (step, name)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        if p in optimizers[0].state:
            assert torch.equal(optimizers[0].state[p]["momentum_buffer"], reference_state[q])
    assert not torch.equal(models[0][3].weight, torch.zeros(4, 8))  # the zero parameter moved
    assert {g["lars_adapt"] for g in optimizers[0].param_groups} == {True, False}


def test_sgd_and_adamw_use_multi_tensor_updates():
    params = [ParamGroup("all", list(make_model(0).parameters()))]
    sgd = build_optimizer(params, OptimConfig(name="sgd"), peak_lr=0.1)
    adamw = build_optimizer(params, OptimConfig(name="adamw"), peak_lr=0.1)
    assert sgd.defaults["foreach"] is True
    assert adamw.defaults["foreach"] is True  # fused on a GPU
