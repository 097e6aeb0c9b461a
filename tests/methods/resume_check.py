"""Interrupt a tiny training run mid-epoch, resume it, and compare with an uninterrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from siamssl.checkpoint import load_checkpoint
from siamssl.config import config_from_dict
from siamssl.train.trainer import Interrupted, Trainer


def _stopping_trainer(raw: dict[str, Any], stop_at_step: int) -> Trainer:
    trainer = Trainer(config_from_dict(raw))
    step = trainer._train_step

    def step_then_maybe_stop(batch, epoch):  # type: ignore[no-untyped-def]
        step(batch, epoch)
        if trainer.global_step == stop_at_step:
            trainer.request_stop()

    trainer._train_step = step_then_maybe_stop  # type: ignore[method-assign]
    return trainer


def assert_resume_is_exact(reference_raw: dict[str, Any], interrupted_raw: dict[str, Any], stop_at_step: int = 3) -> dict[str, torch.Tensor]:
    """Run ``reference_raw`` straight through and ``interrupted_raw`` (same config, another output_dir)
    stopped after ``stop_at_step`` steps then resumed; every model tensor (parameters and buffers)
    must be bit-identical. Returns the final model state."""
    Trainer(config_from_dict(reference_raw)).fit()
    with pytest.raises(Interrupted):
        _stopping_trainer(interrupted_raw, stop_at_step).fit()
    Trainer(config_from_dict({**interrupted_raw, "trainer": {**interrupted_raw["trainer"], "resume": True}})).fit()
    expected = load_checkpoint(Path(reference_raw["output_dir"]) / "checkpoints" / "last.pt")["model"]
    actual = load_checkpoint(Path(interrupted_raw["output_dir"]) / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key
    return expected
