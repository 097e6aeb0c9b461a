"""Sharding of the global batch over ranks (tests/data/test_loader.py checks that 2 ranks see the
views of 1 process): no sample twice in an epoch across ranks, a new order every epoch, resume
under another world size, and the global batch driving the learning rate."""

from __future__ import annotations

import pytest
import torch

from siamssl.data import AugmentConfig, ImageSplit, TrainLoader, view_transforms
from siamssl.errors import ConfigError
from siamssl.optim import peak_learning_rate

GLOBAL_BATCH = 8



def _split() -> ImageSplit:
    g = torch.Generator().manual_seed(0)
    return ImageSplit(labels=torch.arange(36) % 4, images=torch.randint(0, 256, (36, 3, 12, 12), generator=g, dtype=torch.uint8))


def _loader(rank: int, world: int) -> TrainLoader:
    transforms = view_transforms(AugmentConfig(crop_size=8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return TrainLoader(_split(), transforms, GLOBAL_BATCH, seed=3, rank=rank, world_size=world)


def test_every_epoch_reshuffles_and_no_rank_repeats_another_ranks_sample():
    epochs = []
    for epoch in range(3):
        seen = torch.cat([b.index for r in range(2) for b in _loader(r, 2).batches(epoch)])
        assert seen.unique().numel() == seen.numel() == 32
        epochs.append(torch.cat([b.index for b in _loader(0, 2).batches(epoch)]))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_resuming_mid_epoch_on_another_world_size_continues_the_same_samples():
    full = torch.cat([b.index for b in _loader(0, 1).batches(epoch=2)])
    later = torch.cat([torch.cat([b.index for b in _loader(r, 2).batches(epoch=2, start_step=3)]) for r in range(2)])
    assert torch.equal(later.sort().values, full[3 * GLOBAL_BATCH :].sort().values)


def test_global_batch_must_divide_over_processes():
    with pytest.raises(ConfigError, match="data.batch_size=8 is not divisible by the 3 processes"):
        _loader(0, 3)


def test_learning_rate_scales_with_the_global_batch():
    assert peak_learning_rate(0.05, 512, "linear") == pytest.approx(0.1)
    assert peak_learning_rate(0.05, 4096, "linear") == pytest.approx(0.8)
    assert peak_learning_rate(0.03, 4096, "none") == 0.03
