import math

import torch
from torch import nn

from siamssl.methods.momentum import cosine_momentum, ema_update_, make_target


def test_target_is_a_frozen_copy():
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters()))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(online.parameters(), target.parameters()))


def test_ema_moves_parameters_by_the_rule_and_leaves_buffers():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = make_target(online)
    online(torch.randn(8, 4))  # changes online BN running stats only
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    buffers_before = [b.clone() for b in target.buffers()]
    ema_update_(target, online, 0.9)
    for old, new, theta in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * theta, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(buffers_before, target.buffers()))


def test_cosine_momentum_schedule_endpoints_and_midpoint():
    assert cosine_momentum(0.996, 0, 100) == 0.996
    assert cosine_momentum(0.996, 100, 100) == 1.0
    assert math.isclose(cosine_momentum(0.99, 50, 100), 1 - 0.01 * 0.5)
