"""VICReg: the expander layout of the official code, the wiring of backbone, expander and loss,
no collapse in a short run (while the invariance term alone collapses), and the shipped recipes
through the real trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from siamssl.heads import vicreg_expander
from siamssl.losses import vicreg_loss
from siamssl.methods import Batch, TrainingProgress, VICReg
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import shipped_config_raw, tiny_backbone, train, view_pool

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _method(**options) -> VICReg:
    backbone, dim = tiny_backbone()
    return VICReg(backbone, dim, VICReg.Config(**{"proj_dim": 32, "proj_layers": 2, **options}))


def test_expander_matches_the_official_layout() -> None:
    """[Linear(with bias) + BN + ReLU] × 2 → Linear(no bias), no output BN."""
    expander = vicreg_expander(16, 24, 3)
    kinds = [type(m).__name__ for m in expander]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    linears = [m for m in expander if isinstance(m, torch.nn.Linear)]
    assert [m.bias is not None for m in linears] == [True, True, False]
    assert VICReg.Config() == VICReg.Config(proj_dim=8192, proj_layers=3, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)


def test_forward_is_expander_then_loss_on_each_view_separately() -> None:
    method = _method(sim_coeff=3.0, std_coeff=5.0, cov_coeff=0.5)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    out = method(Batch(views=views, index=torch.arange(8)), TrainingProgress(0, 1, 0, 1))
    z1, z2 = method.projector(method.backbone(views[0])), method.projector(method.backbone(views[1]))
    torch.testing.assert_close(out["loss"], vicreg_loss(z1, z2, 3.0, 5.0, 0.5))
    torch.testing.assert_close(out["embedding"], z1)
    assert out["features"].shape == (8, method.feature_dim) and not out["features"].requires_grad


def _embedding_std(method: VICReg, views: list[torch.Tensor]) -> float:
    with torch.no_grad():
        z = method(Batch(views=views, index=torch.arange(views[0].shape[0])), TrainingProgress(0, 1, 0, 1))["embedding"]
    return float(z.std(dim=0).mean())


def test_short_run_keeps_the_variance_while_invariance_alone_collapses() -> None:
    pool = view_pool(4, 16)
    optim = dict(name="sgd", base_lr=0.05, weight_decay=5e-4)
    method = _method()
    losses = train(method, pool, 60, optim)
    assert all(math.isfinite(x) for x in losses) and sum(losses[-5:]) / 5 < 0.8 * losses[0]
    invariance_only = _method(std_coeff=0.0, cov_coeff=0.0)
    train(invariance_only, pool, 60, optim)
    assert _embedding_std(method, pool[0]) > 0.3 > 0.05 > _embedding_std(invariance_only, pool[0])


def _last_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r][-1]


def test_tiny_config_trains_through_the_trainer(tmp_path: Path) -> None:
    summary = Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.max_steps=2", method="vicreg"))).fit()
    assert summary["steps"] == 2 and math.isfinite(_last_loss(tmp_path / "run"))


@pytest.mark.parametrize("name,extra", [("vicreg.yaml", ()), ("vicreg_imagenet.yaml", ("method.proj_dim=512",))])
def test_shipped_config_trains_two_steps(tmp_path: Path, name: str, extra: tuple[str, ...]) -> None:
    cfg = config_from_dict(shipped_config_raw(str(CONFIGS / name), str(tmp_path / "run"), *extra))
    assert Trainer(cfg).fit()["steps"] == 2
    assert math.isfinite(_last_loss(tmp_path / "run"))
