"""The two optimizer features the MoCo v1 and solo-learn CIFAR recipes need: a step schedule
(×gamma at epoch milestones) and LARS with the rate clipped at the global one (``lars_clip_lr``)."""

from __future__ import annotations

import pytest
import torch

from siamssl.methods.base import ParamGroup
from siamssl.train.config import OptimConfig
from siamssl.train.optim import LARS, build_optimizer, schedule_factor


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    cfg = OptimConfig(schedule="step", step_milestones=[120, 160], step_gamma=0.1, schedule_unit="epoch")
    steps_per_epoch = 10
    factors = {epoch: schedule_factor(epoch * steps_per_epoch + 3, 2000, steps_per_epoch, cfg) for epoch in (0, 119, 120, 159, 160, 199)}
    assert factors == pytest.approx({0: 1.0, 119: 1.0, 120: 0.1, 159: 0.1, 160: 0.01, 199: 0.01})


@pytest.mark.parametrize("lr,clip", [(2.0, False), (2.0, True), (0.001, True)])
def test_lars_step_closed_form_with_and_without_clipping(lr, clip):
    w0 = torch.tensor([3.0, 4.0])  # ‖w‖ = 5
    grad = torch.tensor([0.6, 0.8])  # ‖g‖ = 1, wd 0
    p = torch.nn.Parameter(w0.clone())
    p.grad = grad.clone()
    eta = 0.02
    LARS([p], lr=lr, momentum=0.9, eta=eta, clip_lr=clip).step()
    trust = eta * 5.0 / 1.0  # 0.1
    if clip:
        trust = min(trust / lr, 1.0)  # the per-layer rate lr·trust never exceeds lr
    torch.testing.assert_close(p.detach(), w0 - lr * trust * grad)


def test_builder_passes_the_clip_flag():
    params = [torch.nn.Parameter(torch.ones(2, 2))]
    optimizer = build_optimizer([ParamGroup("all", params)], OptimConfig(name="lars", lars_clip_lr=True), peak_lr=1.0)
    assert all(group["clip_lr"] for group in optimizer.param_groups)
