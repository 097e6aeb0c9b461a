import torch

from siamssl.data import AugmentConfig, TrainLoader, view_transforms
from siamssl.data.datasets import ImageSplit


def _split(n=48, size=12):
    g = torch.Generator().manual_seed(0)
    return ImageSplit(labels=torch.arange(n) % 3, images=torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8))


def _loader(split, batch, rank=0, world=1, seed=7, views=2):
    transforms = view_transforms(AugmentConfig(crop_size=8, views=views), (0.5,) * 3, (0.25,) * 3)
    return TrainLoader(split, transforms, batch, seed, num_workers=0, rank=rank, world_size=world)


def test_batches_are_deterministic_and_reshuffle_per_epoch():
    split = _split()
    first = [b.index for b in _loader(split, 16).batches(epoch=0)]
    again = [b.index for b in _loader(split, 16).batches(epoch=0)]
    other = [b.index for b in _loader(split, 16).batches(epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert sorted(torch.cat(first).tolist()) == list(range(48))  # every sample once per epoch


def test_two_ranks_of_batch_b_see_the_same_views_as_one_rank_of_2b():
    split = _split()
    single = list(_loader(split, 16).batches(epoch=3))
    rank0 = list(_loader(split, 16, rank=0, world=2).batches(epoch=3))
    rank1 = list(_loader(split, 16, rank=1, world=2).batches(epoch=3))
    for whole, a, b in zip(single, rank0, rank1):
        assert torch.equal(whole.index, torch.cat([a.index, b.index]))
        for v in range(2):
            assert torch.equal(whole.views[v], torch.cat([a.views[v], b.views[v]]))


def test_resuming_at_a_step_continues_the_same_stream():
    split = _split()
    full = list(_loader(split, 8).batches(epoch=2))
    resumed = list(_loader(split, 8).batches(epoch=2, start_step=4))
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed):
        assert torch.equal(a.index, b.index) and torch.equal(a.views[1], b.views[1])


def test_views_differ_and_have_the_crop_size():
    batch = next(iter(_loader(_split(), 16, views=3).batches(epoch=0)))
    assert len(batch.views) == 3 and batch.views[0].shape == (16, 3, 8, 8)
    assert not torch.equal(batch.views[0], batch.views[1])
    assert torch.equal(batch.labels, _split().labels[batch.index])


def test_workers_do_not_change_the_stream():
    split = _split()
    transforms = view_transforms(AugmentConfig(crop_size=8), (0.5,) * 3, (0.25,) * 3)
    inline = next(iter(TrainLoader(split, transforms, 16, 1, num_workers=0).batches(0)))
    workers = next(iter(TrainLoader(split, transforms, 16, 1, num_workers=2).batches(0)))
    assert torch.equal(inline.views[0], workers.views[0])
