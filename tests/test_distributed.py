"""Single-process behaviour of :mod:`siamssl.distributed` (the 2-process behaviour is in
``tests/distributed/``): the SyncBatchNorm converter, SplitBatchNorm and the Shuffle-BN helpers.
Exact comparisons unless stated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from siamssl.distributed import (
    SplitBatchNorm,
    SyncBatchNorm,
    convert_sync_batchnorm,
    shuffle_across_ranks,
    unshuffle_across_ranks,
)


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(6), nn.BatchNorm1d(6))
        self.norm = self.encoder[1]  # the same BatchNorm reachable through two paths
        self.split = SplitBatchNorm(6, num_splits=2)


def test_converter_replaces_plain_batchnorms_and_keeps_parameters_buffers_and_sharing():
    model = _Shared()
    model.encoder(torch.randn(4, 3, 6, 6))  # materializes the lazy layer
    before = model.state_dict()
    params = {name: p for name, p in model.named_parameters()}
    converted = convert_sync_batchnorm(model)
    assert type(converted.encoder[1]) is SyncBatchNorm and type(converted.encoder[5]) is SyncBatchNorm
    assert converted.norm is converted.encoder[1]
    assert type(converted.split) is SplitBatchNorm  # a BatchNorm subclass defines its own statistics
    assert list(converted.state_dict()) == list(before)
    assert all(p is params[name] for name, p in converted.named_parameters())
    assert all(torch.equal(v, before[k]) for k, v in converted.state_dict().items())


def test_converter_uses_siamssl_syncbatchnorm_for_cuda_devices_too():
    # torch.nn.SyncBatchNorm reads the ranks' counts on the host in every forward (a sync per layer)
    converted = convert_sync_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), torch.device("cuda"))
    assert type(converted[1]) is SyncBatchNorm
    assert type(convert_sync_batchnorm(nn.BatchNorm1d(3))) is SyncBatchNorm  # the module itself


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 4, 4)])
def test_sync_batchnorm_without_process_group_is_batchnorm(shape):
    x = torch.randn(*shape) * 2 + 1
    plain = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    synced = convert_sync_batchnorm(type(plain)(shape[1]))
    for train in (True, False):
        plain.train(train), synced.train(train)
        assert torch.equal(synced(x), plain(x))
    assert torch.equal(synced.running_var, plain.running_var)


def test_split_batchnorm_normalizes_each_chunk_like_its_own_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(12, 3, 2, 2) * 3 + 2
    split = SplitBatchNorm(3, num_splits=3)
    with torch.no_grad():
        split.weight.uniform_(0.5, 2.0), split.bias.uniform_(-1, 1)
    chunks = []
    for _ in range(3):
        bn = nn.BatchNorm2d(3)
        bn.load_state_dict(split.state_dict())
        chunks.append(bn)
    expected = torch.cat([bn(c) for bn, c in zip(chunks, x.chunk(3))])
    torch.testing.assert_close(split(x), expected, atol=1e-6, rtol=1e-6)
    mean_running = torch.stack([bn.running_mean for bn in chunks]).mean(0)
    torch.testing.assert_close(split.running_mean, mean_running, atol=1e-7, rtol=1e-6)
    split.eval()
    reference = nn.BatchNorm2d(3).eval()
    reference.load_state_dict(split.state_dict())
    assert torch.equal(split(x), reference(x))
    with pytest.raises(ValueError, match="batch of 10 does not split into 3 equal chunks"):
        split.train()(x[:10])


def test_shuffle_then_unshuffle_restores_the_batch_on_one_process():
    torch.manual_seed(0)
    x = torch.arange(10.0).view(5, 2)
    shuffled, permutation = shuffle_across_ranks(x)
    assert torch.equal(shuffled, x[permutation]) and not torch.equal(permutation, torch.arange(5))
    assert torch.equal(unshuffle_across_ranks(shuffled * 3, permutation), x * 3)
