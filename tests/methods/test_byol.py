"""BYOL: the target gets no gradient and moves by exactly the cosine-scheduled EMA after the step;
the loss is the sum over both directions of 2 − 2cos with views forwarded separately; it does not
collapse, while its no-predictor, zero-momentum ablation does."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siamssl.methods import BYOL
from tests.methods.helpers import progress, tiny_backbone, train, two_views


def _byol(**options) -> BYOL:
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    cfg = BYOL.Config(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=32, **options)
    return BYOL(backbone, dim, cfg)


def test_momentum_schedule_matches_the_closed_form():
    method = _byol(momentum=0.99)
    assert method.momentum_at(0, 100) == pytest.approx(0.99, abs=1e-12)
    assert method.momentum_at(100, 100) == pytest.approx(1.0, abs=1e-12)
    for k in (1, 30, 77):
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2
        assert method.momentum_at(k, 100) == pytest.approx(expected, abs=1e-12)
    assert _byol(momentum=0.99, momentum_schedule="constant").momentum_at(77, 100) == 0.99


def test_target_gets_no_gradient_and_is_not_optimized():
    method = _byol()
    method(two_views(8, seed=1), progress(0))["loss"].backward()
    target = list(method.target_backbone.parameters()) + list(method.target_projector.parameters())
    assert target and all(not p.requires_grad and p.grad is None for p in target)
    optimized = {id(p) for g in method.parameter_groups() for p in g.params}
    assert not optimized & {id(p) for p in target}
    online = list(method.backbone.parameters()) + list(method.projector.parameters()) + list(method.predictor.parameters())
    assert optimized == {id(p) for p in online}


def test_target_moves_by_exactly_the_ema_rule_after_the_step():
    method = _byol(momentum=0.9)
    with torch.no_grad():  # make online and target differ, as after some training
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
    pairs = list(zip(method.target_backbone.parameters(), method.backbone.parameters()))
    pairs += list(zip(method.target_projector.parameters(), method.projector.parameters()))
    before = [(xi.clone(), theta.clone()) for xi, theta in pairs]
    step, total = 3, 10
    tau = 1 - (1 - 0.9) * (math.cos(math.pi * step / total) + 1) / 2
    method.on_after_optimizer_step(progress(step, total))
    for (xi, _), (xi_old, theta) in zip(pairs, before):
        torch.testing.assert_close(xi, tau * xi_old + (1 - tau) * theta, rtol=0, atol=1e-6)


def test_loss_sums_both_directions_with_views_forwarded_separately():
    method = _byol()
    batch = two_views(8, seed=2)
    x1, x2 = batch.views
    loss = method(batch, progress(0))["loss"]

    def online(x):
        return method.predictor(method.projector(method.backbone(x)))

    def target(x):
        return method.target_projector(method.target_backbone(x))

    with torch.no_grad():  # train-mode BN: outputs depend on the batch only, so recomputing is exact
        p1, p2, t1, t2 = online(x1), online(x2), target(x1), target(x2)
        expected = (2 - 2 * F.cosine_similarity(p1, t2)).mean() + (2 - 2 * F.cosine_similarity(p2, t1)).mean()
        both = torch.cat([x1, x2])
        p, t = online(both), target(both)  # one concatenated pass: BN over both views
        concatenated = (2 - 2 * F.cosine_similarity(p[:8], t[8:])).mean() + (2 - 2 * F.cosine_similarity(p[8:], t[:8])).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, concatenated, rtol=1e-3)


def test_target_batchnorm_statistics_come_from_its_own_forward():
    method = _byol()
    bn = method.target_backbone[1]
    before = bn.running_mean.clone()
    method(two_views(8, seed=3), progress(0))
    assert not torch.equal(before, bn.running_mean)


def test_no_collapse_and_the_collapsing_ablation_collapses():
    healthy = train(_byol(momentum=0.99), steps=150, lr=0.1)
    ablation = _byol(momentum=0.0, momentum_schedule="constant")
    ablation.predictor = nn.Identity()  # no predictor + target = online: SimSiam without predictor
    collapsed = train(ablation, steps=150, lr=0.1)
    d = 8  # healthy: std of the l2-normalized embedding ≈ 1/√d; measured 0.33 vs 0.05 collapsed
    assert healthy > 0.6 / math.sqrt(d), healthy
    assert collapsed < 0.3 * healthy, (collapsed, healthy)


def test_directpred_predictor_follows_the_online_projections_and_is_not_trained():
    """With ``predictor=directpred`` the predictor has no parameters, F̂ is the correlation of both
    views' online projections, and W is recomputed from F̂ after the optimizer step (with the EMA)."""
    from siamssl.heads import DirectPredictor, DirectPredOptions, directpred_weight

    method = _byol(predictor="directpred", directpred=DirectPredOptions(rho=0.5, eps=0.1))
    assert isinstance(method.predictor, DirectPredictor) and list(method.predictor.parameters()) == []
    batch = two_views(8, seed=2)
    method(batch, progress(0))["loss"].backward()
    with torch.no_grad():
        z = torch.cat([method.projector(method.backbone(v)) for v in batch.views])
    torch.testing.assert_close(method.predictor.correlation, z.t() @ z / z.shape[0], rtol=1e-5, atol=1e-6)
    method.on_after_optimizer_step(progress(0))
    torch.testing.assert_close(method.predictor.weight, directpred_weight(method.predictor.correlation, 0.1), rtol=0, atol=0)


# ------------------------------------------------------- research switches: fixed random / shallow target


def _byol_fixed_random(**options) -> BYOL:
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    cfg = BYOL.Config(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=32, target="fixed_random", **options)
    return BYOL(backbone, dim, cfg, target_backbone=tiny_backbone())


def test_fixed_random_target_is_independent_of_the_online_init_and_never_moves():
    method = _byol_fixed_random()
    online = [p.detach().clone() for p in list(method.backbone.parameters()) + list(method.projector.parameters())]
    target_params = list(method.target_backbone.parameters()) + list(method.target_projector.parameters())
    target = [p.detach().clone() for p in target_params]
    assert [p.shape for p in online] == [p.shape for p in target]
    # Not a copy: every weight matrix differs (BN γ = 1, β = 0 start equal by construction).
    matrices = [(a, b) for a, b in zip(online, target) if a.ndim > 1]
    assert matrices and all(not torch.equal(a, b) for a, b in matrices)
    with torch.no_grad():
        before = float(method(two_views(256, seed=99), progress(0))["loss"])
    train(method, steps=120, lr=0.1)
    for saved, now in zip(target, target_params):
        assert torch.equal(saved, now)  # fixed: no EMA, no gradient
    moved = [a for a, b in zip(online, list(method.backbone.parameters()) + list(method.projector.parameters())) if not torch.equal(a, b)]
    assert moved  # the online network trains
    with torch.no_grad():
        after = float(method(two_views(256, seed=99), progress(0))["loss"])
    # The online network learns to predict the fixed target: loss well below its start (measured 3.77 → 0.47).
    assert after < 0.5 * before, (before, after)


def test_fixed_random_target_through_the_trainer_is_drawn_from_the_run_seed(tmp_path):
    from siamssl.eval.runs import load_run
    from siamssl.config import config_from_dict
    from siamssl.train.trainer import Trainer
    from tests.conftest import tiny_raw

    Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.max_steps=3", "method.target=fixed_random", method="byol"))).fit()
    trained = load_run(tmp_path / "run", device="cpu").method.state_dict()
    init = load_run(tmp_path / "run", device="cpu", random_init=True).method.state_dict()
    target_keys = [k for k in trained if k.startswith("target_") and trained[k].is_floating_point() and "running" not in k]
    assert target_keys
    for key in target_keys:
        assert torch.equal(trained[key], init[key]), key
    online_conv = "backbone.conv1.weight"
    assert not torch.equal(init[online_conv], init["target_" + online_conv])
    assert not torch.equal(trained[online_conv], init[online_conv])


def test_shallow_target_is_the_ema_of_the_first_half_of_the_stages_with_a_fixed_mlp():
    from siamssl.backbones import build_backbone, forward_stages

    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet_narrow", cifar_stem=True, widths=[8, 16, 24, 32])
    method = BYOL(backbone, dim, BYOL.Config(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=32, momentum=0.9,
                                             momentum_schedule="constant", target="shallow"))
    assert method.target_backbone.num_stages == 2 and method.target_projector[0].in_features == 16
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    from siamssl.methods.base import Batch

    batch = Batch(views=views, index=torch.arange(8))
    with torch.no_grad():  # the target's features are stage 2 of the (EMA) backbone copy, pooled
        expected = method.target_projector(forward_stages(method.target_backbone.backbone, views[0], 2)[-1])
        assert torch.allclose(method.target_projector(method.target_backbone(views[0])), expected)
    mlp_before = [p.clone() for p in method.target_projector.parameters()]
    stages_before = [p.clone() for p in method.target_backbone.backbone.parameters()]
    optimizer = torch.optim.SGD([p for g in method.parameter_groups() for p in g.params], lr=0.1)
    method(batch, progress(0))["loss"].backward()
    optimizer.step()
    method.on_after_optimizer_step(progress(0))
    for p0, p, online in zip(stages_before, method.target_backbone.backbone.parameters(), method.backbone.parameters()):
        torch.testing.assert_close(p, 0.9 * p0 + 0.1 * online.detach())
    assert all(torch.equal(a, b) for a, b in zip(mlp_before, method.target_projector.parameters()))
    assert all(not p.requires_grad for p in method.target_projector.parameters())
