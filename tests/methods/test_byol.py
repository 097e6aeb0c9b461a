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
