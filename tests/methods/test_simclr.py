"""SimCLR: loss = 2 × nt_xent (the official sum of both directions) with both views in one
BatchNorm batch; projector as in the official code (v1: 2 layers, v2: 3; last BN with γ and no β;
hidden width = feature width; N(0, 0.01) kernels); no collapse."""

from __future__ import annotations

import math

import pytest
import torch

from siamssl.losses import nt_xent
from siamssl.methods import SimCLR
from tests.methods.helpers import progress, tiny_backbone, train, two_views


def _simclr(**options) -> SimCLR:
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    settings = dict(proj_dim=8)
    settings.update(options)
    return SimCLR(backbone, dim, SimCLR.Config(**settings))


def test_loss_is_twice_nt_xent_over_one_concatenated_batch():
    method = _simclr(temperature=0.5)
    batch = two_views(8, seed=1)
    x1, x2 = batch.views
    loss = method(batch, progress(0))["loss"]
    with torch.no_grad():
        z = method.projector(method.backbone(torch.cat([x1, x2])))
        expected = 2 * nt_xent(z[:8], z[8:], 0.5)
        separate = 2 * nt_xent(method.projector(method.backbone(x1)), method.projector(method.backbone(x2)), 0.5)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(loss, separate, rtol=1e-3)  # per-view BN would be a different loss


@pytest.mark.parametrize("layers", [2, 3])
def test_projector_matches_the_official_head(layers):
    method = _simclr(proj_layers=layers)
    linears = [m for m in method.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == layers
    assert [m.out_features for m in linears] == [16] * (layers - 1) + [8]  # hidden width = feature dim (16)
    assert all(m.bias is None for m in linears)  # BN follows every Dense
    last = method.projector[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and last.weight.requires_grad and not last.bias.requires_grad
    assert torch.count_nonzero(last.bias) == 0
    optimized = {id(p) for g in method.parameter_groups() for p in g.params}
    assert id(last.bias) not in optimized and id(last.weight) in optimized
    weights = torch.cat([m.weight.detach().flatten() for m in linears])
    assert 0.007 < float(weights.std()) < 0.013  # N(0, 0.01) as in the TF LinearLayer


def test_beta_stays_zero_through_training_steps():
    method = _simclr()
    train(method, steps=3)
    assert torch.count_nonzero(method.projector[-1].bias) == 0


def test_no_collapse():
    std = train(_simclr(temperature=0.5), steps=60)
    assert std > 0.6 / math.sqrt(8), std
