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


def test_instdisc_recipe_schedule_is_lemniscates_adjust_learning_rate():
    """configs/instdisc.yaml's schedule against zhirongw/lemniscate.pytorch cifar.py @c5f1bd1:
    ``lr = 0.03 if epoch < 80 else 0.03 * 0.1 ** ((epoch - 80) // 40)`` for epochs 0..199, i.e. ×0.1 at
    epochs 120 and 160 (epoch 80 starts the formula at 0.1⁰), constant within an epoch."""
    from pathlib import Path

    from siamssl.config import load_config

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "instdisc.yaml"))
    steps_per_epoch, epochs = 7, cfg.trainer.epochs
    assert epochs == 200 and cfg.optim.base_lr == 0.03 and cfg.optim.lr_scaling == "none"

    def official(epoch: int) -> float:
        return 0.03 if epoch < 80 else 0.03 * 0.1 ** ((epoch - 80) // 40)

    for epoch in range(epochs):
        for step in (epoch * steps_per_epoch, epoch * steps_per_epoch + steps_per_epoch - 1):
            rate = cfg.optim.base_lr * schedule_factor(step, epochs * steps_per_epoch, steps_per_epoch, cfg.optim)
            assert rate == pytest.approx(official(epoch), rel=1e-12), epoch
