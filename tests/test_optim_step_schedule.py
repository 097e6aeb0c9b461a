"""The step schedule of MoCo v1's recipe: the rate is multiplied by ``step_gamma`` at each epoch
milestone (after the warmup, if any)."""

from __future__ import annotations

import pytest

from siamssl.config import OptimConfig
from siamssl.optim import schedule_factor


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    cfg = OptimConfig(schedule="step", step_milestones=[120, 160], step_gamma=0.1, schedule_unit="epoch")
    steps_per_epoch = 10
    factors = {epoch: schedule_factor(epoch * steps_per_epoch + 3, 2000, steps_per_epoch, cfg) for epoch in (0, 119, 120, 159, 160, 199)}
    assert factors == pytest.approx({0: 1.0, 119: 1.0, 120: 0.1, 159: 0.1, 160: 0.01, 199: 0.01})


def test_step_schedule_after_warmup():
    cfg = OptimConfig(schedule="step", step_milestones=[3], step_gamma=0.5, warmup_epochs=1)
    assert schedule_factor(5, 100, 10, cfg) == pytest.approx(0.5)  # half-way through the warmup
    assert schedule_factor(10, 100, 10, cfg) == pytest.approx(1.0)
    assert schedule_factor(30, 100, 10, cfg) == pytest.approx(0.5)
