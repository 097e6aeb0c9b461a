"""Optimizer features added for DINO and SwAV: the per-step cosine weight-decay schedule
(``optim.weight_decay_end``), LARC clipping (``optim.lars_clip``), and how close our LARS without
exclusions is to apex LARC (clip=False), which SwAV uses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from siamssl.methods import ParamGroup
from siamssl.config import OptimConfig, config_from_dict
from siamssl.optim import LARS, build_optimizer, set_weight_decays, weight_decay_at
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw


def test_weight_decay_cosine_endpoints_and_midpoint() -> None:
    """DINO's cosine_scheduler(0.04, 0.4): end + ½(start − end)(1 + cos(π·step/total))."""
    cfg = OptimConfig(weight_decay=0.04, weight_decay_end=0.4)
    assert weight_decay_at(0, 100, cfg) == pytest.approx(0.04)
    assert weight_decay_at(50, 100, cfg) == pytest.approx(0.22)
    assert weight_decay_at(100, 100, cfg) == pytest.approx(0.4)
    assert weight_decay_at(25, 100, cfg) == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi / 4)))
    assert weight_decay_at(50, 100, OptimConfig(weight_decay=0.04)) == 0.04


def test_only_groups_decaying_at_the_optimizer_rate_are_scheduled() -> None:
    weights, bias, custom = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))
    groups = [ParamGroup("main", [weights, bias]), ParamGroup("custom", [custom], weight_decay=1e-3)]
    optimizer = build_optimizer(groups, OptimConfig(name="adamw", weight_decay=0.04, weight_decay_end=0.4, exclude_bias_and_norm=True), 1e-3)
    set_weight_decays(optimizer, 0.3)
    decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay == {"main/weights": 0.3, "main/bias_norm": 0.0, "custom/weights": 1e-3}


def test_trainer_applies_the_weight_decay_schedule_every_step(tmp_path) -> None:
    raw = tiny_raw(tmp_path / "run", "trainer.max_steps=3", "optim.weight_decay=0.04", "optim.weight_decay_end=0.4",
                   "eval.monitors=[]")
    trainer = Trainer(config_from_dict(raw))
    trainer.fit()
    expected = weight_decay_at(2, 3, trainer.cfg.optim)  # the last step taken is step 2 of 3
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {expected}
    assert expected == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(2 * math.pi / 3)))


def _one_step(clip: bool, lr: float, param: torch.Tensor, grad: torch.Tensor, weight_decay: float = 0.0) -> torch.Tensor:
    p = nn.Parameter(param.clone())
    p.grad = grad.clone()
    LARS([dict(params=[p])], lr=lr, momentum=0.9, weight_decay=weight_decay, eta=0.02, clip=clip).step()
    return p.detach()


def test_lars_clip_caps_the_adapted_rate_at_the_scheduled_rate() -> None:
    """Step = lr·min(trust/lr, 1)·g with trust = η‖w‖/‖g‖ (solo-learn's clip_lr, apex LARC clip=True)."""
    w, g = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.1])  # trust = 0.02·5/0.1 = 1.0
    # lr 0.3 < trust: plain SGD at lr; unclipped LARS would step lr·trust.
    torch.testing.assert_close(_one_step(True, 0.3, w, g), w - 0.3 * g)
    torch.testing.assert_close(_one_step(False, 0.3, w, g), w - 0.3 * 1.0 * g)
    # lr 2.0 > trust: clipped steps at the adapted rate trust, unclipped at lr·trust.
    torch.testing.assert_close(_one_step(True, 2.0, w, g), w - 1.0 * g)
    torch.testing.assert_close(_one_step(False, 2.0, w, g), w - 2.0 * g)
    # lr 0 (warmup start) neither divides by zero nor moves.
    torch.testing.assert_close(_one_step(True, 0.0, w, g), w)


def test_lars_without_exclusions_is_within_the_bound_of_apex_larc() -> None:
    """apex LARC(clip=False): trust = η‖w‖/(‖g‖ + wd‖w‖ + 1e-8) on g + wd·w, then SGD (no wd).
    Ours: trust = η‖w‖/‖g + wd·w‖. With a = ‖g‖ ≫ b = wd‖w‖ the steps differ by at most
    2b/(a − b) relative, below 1e-3 for every weight here at SwAV's wd 1e-6. (A bias followed by
    BN has a ≈ 0: both steps are then weight decay alone, tiny, and apex's eps 1e-8 sets its size.)"""
    torch.manual_seed(0)
    lr, eta, weight_decay = 4.8, 0.001, 1e-6
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    cfg = OptimConfig(name="lars", exclude_bias_and_norm=False, weight_decay=weight_decay, lars_eta=eta)
    ours = build_optimizer([ParamGroup("all", list(model.parameters()))], cfg, lr)
    assert all(g["lars_adapt"] and g["weight_decay"] == weight_decay for g in ours.param_groups)
    model(torch.randn(16, 8)).pow(2).mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    reference, bounds = [], []
    with torch.no_grad():
        for p in model.parameters():
            a, b = p.grad.norm(), weight_decay * p.norm()
            if p.norm() > 0 and a > 0:
                trust = eta * p.norm() / (a + b + 1e-8)
                reference.append(-lr * trust * (p.grad + weight_decay * p))
            else:  # apex leaves such a gradient alone (no adaptation, no weight decay); so do we
                reference.append(-lr * p.grad)
            bounds.append(float(2 * b / (a - b)) if a > 100 * b else math.inf)
    ours.step()
    for p, old, ref_step, bound, shape in zip(model.parameters(), before, reference, bounds, [q.shape for q in before]):
        relative = float((p.detach() - old - ref_step).norm() / ref_step.norm())
        assert relative <= bound * (1 + 1e-3) + 1e-6
        if len(shape) > 1:
            assert relative < 1e-3
