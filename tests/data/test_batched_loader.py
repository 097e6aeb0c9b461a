"""BatchedTrainLoader keeps TrainLoader's determinism contract: the views of a global batch do not
depend on the number of processes, and a run resumed at any step sees the same batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from siamssl.data.batched import BatchedAugment
from siamssl.data.config import AugmentConfig, DataConfig
from siamssl.data.datasets import ImageSplit
from siamssl.data.loader import BatchedTrainLoader, TrainLoader, build_train_loader, resolve_pipeline
from siamssl.errors import ConfigError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def memory_split(count: int = 40, size: int = 16) -> ImageSplit:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return ImageSplit(labels=torch.arange(count) % 5, images=images)


def augment(**overrides) -> BatchedAugment:
    cfg = AugmentConfig(crop_size=16, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2], **overrides)
    return BatchedAugment(cfg, MEAN, STD)


def collect(loader, epoch: int = 0, start_step: int = 0) -> list:
    return [(b.views, b.index, b.labels) for b in loader.batches(epoch, start_step)]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (views_a, index_a, labels_a), (views_b, index_b, labels_b) in zip(a, b):
        assert torch.equal(index_a, index_b) and torch.equal(labels_a, labels_b)
        assert len(views_a) == len(views_b)
        for x, y in zip(views_a, views_b):
            assert torch.equal(x, y)


def merge_ranks(per_rank: list[list]) -> list:
    """Concatenate the ranks' slices of every global batch, as one process would see it."""
    merged = []
    for parts in zip(*per_rank):
        views = [torch.cat([p[0][v] for p in parts]) for v in range(len(parts[0][0]))]
        merged.append((views, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])))
    return merged


@pytest.mark.parametrize("small_crops", [0, 2])
def test_one_process_with_2b_equals_two_processes_with_b(small_crops):
    split, aug = memory_split(), augment(small_crops=small_crops, small_crop_size=8)
    single = collect(BatchedTrainLoader(split, aug, 16, seed=3))
    ranks = [collect(BatchedTrainLoader(split, aug, 16, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 2 and all(len(b[0]) == 2 + small_crops for b in single)
    assert single[0][0][0].shape == (16, 3, 16, 16)
    assert_same_batches(single, merge_ranks(ranks))


def test_resume_mid_epoch_continues_exactly():
    loader = BatchedTrainLoader(memory_split(64), augment(), 16, seed=1)
    full = collect(loader, epoch=2)
    assert_same_batches(full[2:], collect(loader, epoch=2, start_step=2))


def test_epochs_and_seeds_change_order_and_views_reproducibly():
    split, aug = memory_split(), augment()
    first = collect(BatchedTrainLoader(split, aug, 16, seed=0), epoch=0)
    assert_same_batches(first, collect(BatchedTrainLoader(split, aug, 16, seed=0), epoch=0))
    for other in (collect(BatchedTrainLoader(split, aug, 16, seed=0), epoch=1), collect(BatchedTrainLoader(split, aug, 16, seed=1), epoch=0)):
        assert not torch.equal(first[0][1], other[0][1])
    # every sample of an epoch appears at most once; views and labels follow the indices
    indices = torch.cat([b[1] for b in first])
    assert indices.unique().numel() == indices.numel() == 32
    assert torch.equal(torch.cat([b[2] for b in first]), split.labels[indices])


def test_same_global_batch_same_views_whatever_the_batch_position():
    """The draws are per global batch: a rank's views are the same slice of them for any world size."""
    split, aug = memory_split(), augment()
    loader = BatchedTrainLoader(split, aug, 16, seed=5)
    draws = loader.draws(epoch=0, step=1)
    rank1 = BatchedTrainLoader(split, aug, 16, seed=5, rank=1, world_size=4).draws(epoch=0, step=1)
    for whole, part in zip(draws.uniforms, rank1.uniforms):
        assert torch.equal(whole[:, 4:8], part)


def test_batch_size_errors_are_clear():
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        BatchedTrainLoader(memory_split(), augment(), 16, seed=0, world_size=3)
    with pytest.raises(ConfigError, match="larger than the training set"):
        BatchedTrainLoader(memory_split(), augment(), 64, seed=0)
    with pytest.raises(ConfigError, match="prefetch_batches"):
        BatchedTrainLoader(memory_split(), augment(), 16, seed=0, prefetch_batches=0)


def write_folder(root: Path, images: torch.Tensor, jpeg_every: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        if jpeg_every and i % jpeg_every == 0:
            path = root / f"{i:03d}.jpg"
            write_jpeg(image, str(path), quality=95)
        else:
            path = root / f"{i:03d}.png"
            write_png(image, str(path))
        paths.append(str(path))
    return paths


def test_file_backed_batches_equal_in_memory_batches(tmp_path):
    """Lossless files decoded per batch (per-image crop path) give the in-memory views (batched path)."""
    split = memory_split(32)
    files = ImageSplit(labels=split.labels, paths=write_folder(tmp_path / "png", split.images))
    aug = augment()
    # float kernels: the two crop paths agree to float rounding, which rounding to uint8 levels
    # would turn into an occasional one-level difference where a value lies at x.5
    aug.uint8_levels = False
    in_memory = collect(BatchedTrainLoader(split, aug, 16, seed=2), epoch=1)
    from_files = collect(BatchedTrainLoader(files, aug, 16, seed=2), epoch=1)
    for (views_a, index_a, labels_a), (views_b, index_b, labels_b) in zip(in_memory, from_files):
        assert torch.equal(index_a, index_b) and torch.equal(labels_a, labels_b)
        for x, y in zip(views_a, views_b):
            assert (x - y).abs().max() < 1e-4


def test_file_backed_images_of_different_sizes(tmp_path):
    generator = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, 20 + 3 * i, 30 - 2 * i), dtype=torch.uint8, generator=generator) for i in range(12)]
    root = tmp_path / "mixed"
    root.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = root / (f"{i}.jpg" if i % 3 == 0 else f"{i}.png")
        (write_jpeg if i % 3 == 0 else write_png)(image, str(path))
        paths.append(str(path))
    files = ImageSplit(labels=torch.arange(12) % 3, paths=paths)
    aug = augment(small_crops=1, small_crop_size=8)
    single = collect(BatchedTrainLoader(files, aug, 4, seed=0, num_workers=0))
    ranks = [collect(BatchedTrainLoader(files, aug, 4, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 3 and [v.shape for v in single[0][0]] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)]
    assert_same_batches(single, merge_ranks(ranks))
    assert_same_batches(single[1:], collect(BatchedTrainLoader(files, aug, 4, seed=0), start_step=1))


def test_pipeline_choice(tmp_path):
    memory = memory_split()
    files = ImageSplit(labels=memory.labels[:4], paths=write_folder(tmp_path / "f", memory.images[:4]))
    cpu = torch.device("cpu")
    assert resolve_pipeline(DataConfig(), memory, cpu) == "batched"
    assert resolve_pipeline(DataConfig(), files, cpu) == "torchvision"
    assert resolve_pipeline(DataConfig(), files, torch.device("cuda")) == "batched"
    assert resolve_pipeline(DataConfig(pipeline="torchvision"), memory, cpu) == "torchvision"
    cfg = DataConfig(batch_size=16, num_workers=0, augment=AugmentConfig(crop_size=16))
    batched = build_train_loader(memory, cfg, MEAN, STD, seed=0)
    per_sample = build_train_loader(memory, DataConfig(**{**cfg.__dict__, "pipeline": "torchvision"}), MEAN, STD, seed=0)
    assert isinstance(batched, BatchedTrainLoader) and isinstance(per_sample, TrainLoader)
    a, b = next(iter(batched.batches(0))), next(iter(per_sample.batches(0)))
    assert torch.equal(a.index, b.index)  # same sample order, whichever pipeline
    assert [v.shape for v in a.views] == [v.shape for v in b.views] and a.views[0].dtype == b.views[0].dtype
