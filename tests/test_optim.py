import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from siamssl.methods.base import ParamGroup
from siamssl.config import OptimConfig
from siamssl.optim import LARS, build_optimizer, peak_learning_rate, schedule_factor, set_learning_rates


def test_linear_scaling_rule():
    assert peak_learning_rate(0.05, 512, "linear") == pytest.approx(0.1)
    assert peak_learning_rate(0.6, 4096, "none") == 0.6


def test_warmup_then_cosine_to_min():
    cfg = OptimConfig(warmup_epochs=2, min_lr_ratio=0.1, warmup_start_ratio=0.0)
    spe, total = 10, 100
    assert schedule_factor(0, total, spe, cfg) == 0.0
    assert schedule_factor(10, total, spe, cfg) == pytest.approx(0.5)
    assert schedule_factor(20, total, spe, cfg) == pytest.approx(1.0)
    mid = 20 + (total - 20) // 2
    assert schedule_factor(mid, total, spe, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule_factor(total, total, spe, cfg) == pytest.approx(0.1)


def test_epoch_granularity_holds_rate_within_an_epoch():
    cfg = OptimConfig(schedule_unit="epoch")
    values = {schedule_factor(s, 100, 10, cfg) for s in range(30, 40)}
    assert len(values) == 1
    assert values.pop() == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 100)))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_fixed_lr_group_keeps_its_rate_and_lr_scale_applies():
    model = _model()
    groups = [ParamGroup("a", list(model[0].parameters())), ParamGroup("b", list(model[2].parameters()), fixed_lr=True, lr_scale=0.5)]
    opt = build_optimizer(groups, OptimConfig(), peak_lr=0.2)
    set_learning_rates(opt, 0.25)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"a": pytest.approx(0.05), "b": pytest.approx(0.1)}


def test_lars_excludes_bias_and_norm_from_decay_and_adaptation():
    model = _model()
    opt = build_optimizer([ParamGroup("all", list(model.parameters()))], OptimConfig(name="lars", weight_decay=1e-4), 0.1)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["all/weights"]["weight_decay"] == 1e-4 and by_name["all/weights"]["lars_adapt"]
    assert by_name["all/bias_norm"]["weight_decay"] == 0.0 and not by_name["all/bias_norm"]["lars_adapt"]
    assert all(p.ndim == 1 for p in by_name["all/bias_norm"]["params"])


def test_lars_step_matches_the_update_rule():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(3, 4))
    b = nn.Parameter(torch.randn(3))
    opt = LARS([dict(params=[w], lars_adapt=True, weight_decay=0.1), dict(params=[b], lars_adapt=False, weight_decay=0.0)], lr=0.5, momentum=0.9, eta=0.02)
    w0, b0 = w.detach().clone(), b.detach().clone()
    buf_w, buf_b = torch.zeros_like(w0), torch.zeros_like(b0)
    for step in range(3):
        gw, gb = torch.randn(3, 4), torch.randn(3)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        g = gw + 0.1 * w0
        g = g * (0.02 * w0.norm() / g.norm())
        buf_w = g if step == 0 else 0.9 * buf_w + g
        w0 = w0 - 0.5 * buf_w
        buf_b = gb if step == 0 else 0.9 * buf_b + gb
        b0 = b0 - 0.5 * buf_b
        assert torch.allclose(w, w0, atol=1e-6) and torch.allclose(b, b0, atol=1e-6)


def test_sgd_weight_decay_applies_to_all_by_default():
    model = _model()
    opt = build_optimizer([ParamGroup("all", list(model.parameters()))], replace(OptimConfig(), weight_decay=5e-4), 0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 5e-4


# ------------------------------------------------- the multi-tensor LARS is the per-parameter rule


@torch.no_grad()
def reference_lars_step(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The per-parameter LARS (Barlow Twins / VICReg code; LARC clipping), one parameter at a time."""
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
                if group["lars_clip"]:
                    trust = trust.div(group["lr"]).clamp(max=1.0) if group["lr"] > 0 else torch.ones_like(trust)
                grad = grad.mul(trust)
            if p not in state:
                state[p] = torch.clone(grad)
            else:
                state[p].mul_(group["momentum"]).add_(grad)
            p.add_(state[p], alpha=-group["lr"])


def _lars_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 3, bias=False))
    nn.init.zeros_(model[3].weight)  # a zero parameter: trust ratio 1 (‖w‖ = 0)
    model[4].weight.requires_grad_(False)  # never gets a gradient
    return model


@pytest.mark.parametrize("clip", [False, True])
def test_foreach_lars_equals_per_parameter_lars(clip):
    models = [_lars_model(0), _lars_model(0)]
    optimizers = []
    for model in models:
        groups = [ParamGroup("body", list(model[:3].parameters())), ParamGroup("head", list(model[3:].parameters()), exclude_from_lars=True)]
        optimizers.append(build_optimizer(groups, OptimConfig(name="lars", weight_decay=1e-2, lars_eta=0.02, lars_clip=clip), peak_lr=0.5))
    assert isinstance(optimizers[0], LARS) and {g["lars_adapt"] for g in optimizers[0].param_groups} == {True, False}
    reference_state: dict = {}
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(16, 6, generator=generator)
        for model in models:
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            if step == 2:  # a step where one parameter has no gradient: it must stay untouched
                model[0].bias.grad = None
        set_learning_rates(optimizers[0], 1.0 - step / 6)
        set_learning_rates(optimizers[1], 1.0 - step / 6)
        optimizers[0].step()
        reference_lars_step(optimizers[1], reference_state)
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            assert torch.equal(a, b), (step, name)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        if p in optimizers[0].state:
            assert torch.equal(optimizers[0].state[p]["momentum_buffer"], reference_state[q])
    assert not torch.equal(models[0][3].weight, torch.zeros(4, 8))  # the zero parameter moved


def test_sgd_and_adamw_use_multi_tensor_updates():
    params = [ParamGroup("all", list(_lars_model(0).parameters()))]
    assert build_optimizer(params, OptimConfig(name="sgd"), peak_lr=0.1).defaults["foreach"] is True
    assert build_optimizer(params, OptimConfig(name="adamw"), peak_lr=0.1).defaults["foreach"] is True  # fused on a GPU


def test_adam_is_torch_adam_with_coupled_weight_decay():
    """``name: adam`` (lightly's CIFAR-10 SwAV benchmark) steps exactly as ``torch.optim.Adam`` with
    its L2 weight decay, and differs from ``adamw``'s decoupled decay."""
    from siamssl.methods.base import ParamGroup
    from siamssl.config import OptimConfig
    from siamssl.optim import build_optimizer

    def run(make):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        optimizer = make(model)
        data = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(1))
        for x in data:
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    def ours(name):
        return lambda model: build_optimizer([ParamGroup("all", list(model.parameters()))], OptimConfig(name=name, weight_decay=0.1), 1e-2)

    reference = run(lambda model: torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1))
    assert torch.equal(run(ours("adam")), reference)
    assert not torch.allclose(run(ours("adamw")), reference)
