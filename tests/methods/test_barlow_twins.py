"""Barlow Twins: the official separate bias/BN learning rate through the real optimizer builder,
the wiring of backbone, projector and loss, no collapse in a short run, and the shipped recipes
through the real trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from siamssl.heads import barlow_twins_projector
from siamssl.losses import barlow_twins_loss
from siamssl.methods import BarlowTwins, Batch, TrainingProgress
from siamssl.config import OptimConfig, config_from_dict
from siamssl.optim import build_optimizer, peak_learning_rate, schedule_factor, set_learning_rates
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import shipped_config_raw, tiny_backbone, train, view_pool

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _method(**options) -> BarlowTwins:
    backbone, dim = tiny_backbone()
    return BarlowTwins(backbone, dim, BarlowTwins.Config(**{"proj_dim": 32, "proj_layers": 3, **options}))


def test_official_bias_learning_rate_through_the_optimizer_builder() -> None:
    """lr_w = 0.2 × bs/256, lr_b = 0.0048 × bs/256; biases/BN without weight decay or LARS."""
    method = _method()
    cfg = OptimConfig(name="lars", base_lr=0.2, weight_decay=1e-6, warmup_epochs=10, min_lr_ratio=0.001)
    optimizer = build_optimizer(method.parameter_groups(), cfg, peak_learning_rate(cfg.base_lr, 2048, cfg.lr_scaling))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"weights/weights", "biases_and_norms/bias_norm"}
    weights, biases = groups["weights/weights"], groups["biases_and_norms/bias_norm"]
    assert weights["lr"] == pytest.approx(0.2 * 2048 / 256) and biases["lr"] == pytest.approx(0.0048 * 2048 / 256)
    assert (weights["weight_decay"], biases["weight_decay"]) == (1e-6, 0.0)
    assert weights["lars_adapt"] and not biases["lars_adapt"]
    params = [p for p in method.parameters() if p.requires_grad]
    assert {id(p) for p in weights["params"]} == {id(p) for p in params if p.ndim > 1}
    assert {id(p) for p in biases["params"]} == {id(p) for p in params if p.ndim == 1}
    # The schedule scales both rates alike (the official adjust_learning_rate).
    set_learning_rates(optimizer, schedule_factor(5000, 10000, 100, cfg))
    assert biases["lr"] / weights["lr"] == pytest.approx(0.0048 / 0.2)
    # With SGD, biases/BN still keep their own rate and no weight decay.
    sgd = build_optimizer(method.parameter_groups(), OptimConfig(name="sgd", weight_decay=5e-4), 1.0)
    assert sorted((g["lr"], g["weight_decay"]) for g in sgd.param_groups) == [(0.024, 0.0), (1.0, 5e-4)]


def test_forward_is_projector_then_loss_on_each_view_separately() -> None:
    method = _method(loss_scale=0.5, lambd=0.01)
    assert method.projector[-1].bias is None and len([m for m in method.projector if isinstance(m, torch.nn.Linear)]) == 3
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    out = method(Batch(views=views, index=torch.arange(8)), TrainingProgress(0, 1, 0, 1))
    z1, z2 = method.projector(method.backbone(views[0])), method.projector(method.backbone(views[1]))
    torch.testing.assert_close(out["loss"], 0.5 * barlow_twins_loss(z1, z2, 0.01))
    torch.testing.assert_close(out["embedding"], z1)
    assert not out["features"].requires_grad and out["features"].shape == (8, method.feature_dim)


def test_projector_preset_matches_the_official_layout() -> None:
    projector = barlow_twins_projector(16, 24, 3)
    kinds = [type(m).__name__ for m in projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert all(m.bias is None for m in projector if isinstance(m, torch.nn.Linear))


def _off_diagonal_correlation(method: BarlowTwins, views: list[torch.Tensor]) -> float:
    with torch.no_grad():
        z = method(Batch(views=views, index=torch.arange(views[0].shape[0])), TrainingProgress(0, 1, 0, 1))["embedding"]
    c = torch.corrcoef(z.t())
    return float((c - torch.diag(torch.diag(c))).pow(2).sum() / (c.shape[0] * (c.shape[0] - 1)))


def test_short_run_decorrelates_the_embedding_unlike_lambda_zero() -> None:
    """60 steps on the built-in dataset: the loss falls and the embedding dimensions decorrelate;
    without the redundancy term (λ = 0) they collapse onto each other (dimensional collapse)."""
    pool = view_pool(4, 16)
    optim = dict(name="sgd", base_lr=0.05, weight_decay=5e-4)
    method = _method(proj_layers=2)
    losses = train(method, pool, 60, optim)
    assert all(math.isfinite(x) for x in losses) and sum(losses[-5:]) / 5 < 0.5 * losses[0]
    redundant = _method(proj_layers=2, lambd=0.0)
    train(redundant, pool, 60, optim)
    healthy, collapsed = _off_diagonal_correlation(method, pool[0]), _off_diagonal_correlation(redundant, pool[0])
    assert healthy < 0.57 < collapsed  # ≈ 0.47 and ≈ 0.68


def _last_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r][-1]


def test_tiny_config_trains_through_the_trainer(tmp_path: Path) -> None:
    summary = Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.max_steps=2", method="barlow_twins"))).fit()
    assert summary["steps"] == 2 and math.isfinite(_last_loss(tmp_path / "run"))


@pytest.mark.parametrize(
    "name,extra", [("barlow_twins.yaml", ()), ("barlow_twins_imagenet.yaml", ("method.proj_dim=512",))]
)
def test_shipped_config_trains_two_steps(tmp_path: Path, name: str, extra: tuple[str, ...]) -> None:
    cfg = config_from_dict(shipped_config_raw(str(CONFIGS / name), str(tmp_path / "run"), *extra))
    assert Trainer(cfg).fit()["steps"] == 2
    assert math.isfinite(_last_loss(tmp_path / "run"))


def _official_main_py_gradient(method: BarlowTwins, views: list[torch.Tensor], gpus: int, lambd: float) -> list[torch.Tensor]:
    """What facebookresearch/barlowtwins main.py computes on ``gpus`` GPUs, simulated in one process:
    SyncBN gives every GPU the global batch statistics (as one process does); GPU r forms its share
    c_r = bn(z1_r)ᵀ bn(z2_r) / N, ``all_reduce`` sums the shares without autograd, so GPU r's
    backward sees c = c_r + (the others' shares as constants); DDP averages the GPUs' gradients."""
    params = [p for p in method.parameters() if p.requires_grad]
    z1, z2 = method.projector(method.backbone(views[0])), method.projector(method.backbone(views[1]))
    n = z1.shape[0]

    def bn(z: torch.Tensor) -> torch.Tensor:  # nn.BatchNorm1d(affine=False) in training mode
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    shares = [bn(z1)[rows].T @ bn(z2)[rows] / n for rows in torch.arange(n).chunk(gpus)]
    total = [torch.zeros_like(p) for p in params]
    for r in range(gpus):
        c = shares[r] + sum(s.detach() for i, s in enumerate(shares) if i != r)
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        grads = torch.autograd.grad(on_diag + lambd * off_diag, params, retain_graph=True)
        total = [t + g for t, g in zip(total, grads)]
    return [t / gpus for t in total]


@pytest.mark.parametrize("gpus", [2, 4])
def test_official_gradient_option_is_one_over_w_of_the_exact_gradient_as_main_py(gpus: int) -> None:
    """``official_gradient_gpus: W`` keeps the loss value and scales the exact gradient by exactly
    1/W, which is what the official code's non-differentiable all_reduce followed by DDP's averaging
    computes (float64 simulation of W GPUs above)."""
    torch.manual_seed(0)
    exact_method = _method(lambd=0.01).double()
    official_method = _method(lambd=0.01, official_gradient_gpus=gpus).double()
    official_method.load_state_dict(exact_method.state_dict())
    views = [torch.randn(16, 3, 16, 16, dtype=torch.float64) for _ in range(2)]
    batch, progress = Batch(views=views, index=torch.arange(16)), TrainingProgress(0, 1, 0, 1)

    def gradients(method: BarlowTwins) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = method(batch, progress)["loss"]
        params = [p for p in method.parameters() if p.requires_grad]
        return loss.detach(), list(torch.autograd.grad(loss, params))

    exact_loss, exact = gradients(exact_method)
    official_loss, official = gradients(official_method)
    assert torch.equal(exact_loss, official_loss)
    for e, o in zip(exact, official):
        assert torch.equal(o, e / gpus)  # W is a power of two: the scaling is exact
    simulated = _official_main_py_gradient(exact_method, views, gpus, 0.01)
    for o, s in zip(official, simulated):
        torch.testing.assert_close(o, s, rtol=1e-4, atol=1e-8)  # the loss itself runs in float32
    assert max(float(g.abs().max()) for g in exact) > 1e-3  # not a vacuous comparison
