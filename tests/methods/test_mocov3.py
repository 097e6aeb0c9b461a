"""MoCo v3: L = 2T·(ctr(q1, k2) + ctr(q2, k1)) against in-batch keys; the momentum encoder is
backbone + projector (no predictor), gets no gradient and follows the official cosine m one
iteration ahead; heads as in the official builder (ResNet vs ViT); no collapse."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from siamssl.methods import MoCoV3
from tests.methods.helpers import progress, tiny_backbone, train, two_views


def _mocov3(**options) -> MoCoV3:
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    settings = dict(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=32)
    settings.update(options)
    return MoCoV3(backbone, dim, MoCoV3.Config(**settings))


def _ctr(q: torch.Tensor, k: torch.Tensor, t: float) -> torch.Tensor:
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / t
    log_softmax = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -torch.diagonal(log_softmax).mean()


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_loss_is_2t_times_the_symmetric_in_batch_infonce(temperature):
    method = _mocov3(temperature=temperature)
    batch = two_views(8, seed=1)
    x1, x2 = batch.views
    loss = method(batch, progress(0))["loss"]
    with torch.no_grad():
        q1, q2 = (method.predictor(method.projector(method.backbone(x))) for x in (x1, x2))
        k1, k2 = (method.momentum_projector(method.momentum_backbone(x)) for x in (x1, x2))
    expected = 2 * temperature * (_ctr(q1, k2, temperature) + _ctr(q2, k1, temperature))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_momentum_encoder_excludes_the_predictor_gets_no_gradient_and_follows_the_ema():
    method = _mocov3(momentum=0.9)
    method(two_views(8, seed=2), progress(0))["loss"].backward()
    momentum = list(method.momentum_backbone.parameters()) + list(method.momentum_projector.parameters())
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    assert len(momentum) == len(online) and all(not p.requires_grad and p.grad is None for p in momentum)
    optimized = {id(p) for g in method.parameter_groups() for p in g.params}
    assert optimized == {id(p) for p in online + list(method.predictor.parameters())}
    with torch.no_grad():
        for p in online:
            p.add_(torch.randn_like(p))
    before = [(k.clone(), q.clone()) for k, q in zip(momentum, online)]
    step, total = 4, 10
    m = 1 - (1 - 0.9) * (math.cos(math.pi * (step + 1) / total) + 1) / 2  # the official m of iteration step + 1
    method.on_after_optimizer_step(progress(step, total))
    for k, (k_old, q) in zip(momentum, before):
        torch.testing.assert_close(k, m * k_old + (1 - m) * q, rtol=0, atol=1e-6)


def test_momentum_schedule_values():
    method = _mocov3(momentum=0.99)
    assert method.momentum_at(-1, 100) == pytest.approx(0.99, abs=1e-12)
    assert method.momentum_at(99, 100) == pytest.approx(1.0, abs=1e-12)
    assert method.momentum_at(49, 100) == pytest.approx(0.995, abs=1e-12)
    assert _mocov3(momentum_schedule="constant", momentum=0.99).momentum_at(49, 100) == 0.99


def test_heads_follow_the_official_builder():
    resnet = _mocov3()
    assert isinstance(resnet.projector[-1], torch.nn.BatchNorm1d) and not resnet.projector[-1].affine
    assert isinstance(resnet.predictor[-1], torch.nn.Linear)  # no output BN for ResNet
    assert all(m.bias is None for m in list(resnet.projector) + list(resnet.predictor) if isinstance(m, torch.nn.Linear))
    vit = _mocov3(proj_layers=3, predictor_output_bn=True)
    assert sum(isinstance(m, torch.nn.Linear) for m in vit.projector) == 3
    assert isinstance(vit.predictor[-1], torch.nn.BatchNorm1d) and not vit.predictor[-1].affine
    defaults = MoCoV3.Config()
    assert (defaults.temperature, defaults.momentum, defaults.proj_hidden_dim, defaults.proj_dim) == (1.0, 0.99, 4096, 256)


def test_no_collapse():
    std = train(_mocov3(temperature=0.2, momentum=0.99), steps=60)
    assert std > 0.6 / math.sqrt(8), std
