"""SSLModule in a Lightning Trainer does what siamssl's trainer does: same seed, same batches, same
weights after the same steps (parameters, BatchNorm statistics, momentum targets)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from siamssl.config import config_from_dict
from siamssl.errors import ConfigError
from siamssl.integrations.lightning import SSLModule
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw

pytestmark = [
    # Lightning's own: its pytree helper against this torch, and a note for multi-worker iterable datasets.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
    pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined"),
]

# A schedule that changes every step (warmup over half an epoch, then cosine), a weight-decay
# schedule and gradient clipping, so that each of them has to run at the right point of the step;
# 6 steps of 4 per epoch cross an epoch boundary (the next epoch's batches).
SCHEDULED = ("trainer.max_steps=6", "eval.monitors=[]", "optim.warmup_epochs=0.5", "optim.weight_decay_end=1e-3",
             "optim.grad_clip_norm=0.5", "trainer.progress_bar=false")


def _lightning_trainer(max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
    )


@pytest.mark.parametrize("method", ["simsiam", "byol"])
def test_lightning_training_matches_the_siamssl_trainer(method, tmp_path):
    cfg = config_from_dict(tiny_raw(tmp_path / "run", *SCHEDULED, method=method))
    reference = Trainer(cfg)
    initial = {k: v.clone() for k, v in reference.method.state_dict().items()}
    reference.fit()
    expected = reference.method.state_dict()

    module = SSLModule.from_config(cfg)
    built = module.method.state_dict()
    assert all(torch.equal(built[k], initial[k]) for k in initial), "from_config builds other initial weights"
    _lightning_trainer(module.planned_total_steps).fit(module)
    trained = module.method.state_dict()

    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
    moved = [k for k in expected if expected[k].is_floating_point() and not torch.equal(expected[k], initial[k])]
    assert any(k.startswith("backbone.") for k in moved)
    if method == "byol":  # the EMA of on_after_optimizer_step moved the target network
        assert any(k.startswith("target") for k in moved), sorted(moved)


def test_without_the_after_step_hook_the_momentum_target_differs(tmp_path, monkeypatch):
    # Negative control: the comparison above sees a missing on_after_optimizer_step.
    cfg = config_from_dict(tiny_raw(tmp_path / "run", *SCHEDULED, method="byol"))
    reference = Trainer(cfg)
    reference.fit()
    module = SSLModule.from_config(cfg)
    monkeypatch.setattr(module.method, "on_after_optimizer_step", lambda progress: None)
    _lightning_trainer(module.planned_total_steps).fit(module)
    expected, trained = reference.method.state_dict(), module.method.state_dict()
    differing = [k for k in expected if not torch.allclose(trained[k].float(), expected[k].float(), rtol=1e-5, atol=1e-6)]
    assert differing and all(k.startswith("target") for k in differing), differing


def test_a_step_count_other_than_the_config_is_refused(tmp_path):
    module = SSLModule.from_config(config_from_dict(tiny_raw(tmp_path / "run", *SCHEDULED, method="simsiam")))
    with pytest.raises(ConfigError, match="runs 5 optimizer steps but the config plans 6"):
        _lightning_trainer(5).fit(module)
