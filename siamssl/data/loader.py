"""Deterministic, resumable training batches and evaluation batches.

The sample order of epoch ``e`` is a permutation drawn from ``(seed, e)``; global batch ``b`` is
positions ``[b·G, (b+1)·G)`` of it, and rank ``r`` of ``W`` takes the ``r``-th slice of ``G/W``. The
augmentation of each sample is seeded by ``(seed, e, position)``. So one process with batch 2B and
two processes with batch B see the same images with the same augmentations, and a run resumed at
any step continues exactly where it stopped, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from siamssl.data.augment import Transform, eval_transform
from siamssl.data.datasets import ImageSplit
from siamssl.errors import ConfigError
from siamssl.methods.base import Batch

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A reproducible per-sample seed, distinct for every (seed, epoch, position)."""
    return ((seed * 1_000_003 + epoch) * _MIX + position * 0xBF58476D1CE4E5B9) & _MASK


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator)


class _AugmentedSamples(Dataset):
    def __init__(self, split: ImageSplit, indices: Tensor, positions: Tensor, transforms: Sequence[Transform], seed: int, epoch: int):
        self.split, self.indices, self.positions = split, indices, positions
        self.transforms, self.seed, self.epoch = transforms, seed, epoch

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> tuple[list[Tensor], int, int]:
        index = int(self.indices[i])
        image = self.split.load(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, int(self.positions[i])))
            views = [transform(image) for transform in self.transforms]
        return views, index, int(self.split.labels[index])


class TrainLoader:
    """Training batches of this rank: ``batches(epoch, start_step)`` yields :class:`Batch` on ``device``."""

    def __init__(
        self,
        split: ImageSplit,
        transforms: Sequence[Transform],
        global_batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        if global_batch_size % world_size:
            raise ConfigError(f"data.batch_size={global_batch_size} is not divisible by the {world_size} processes")
        self.steps_per_epoch = len(split) // global_batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size={global_batch_size} is larger than the training set ({len(split)} images)")
        self.split, self.transforms = split, list(transforms)
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // world_size
        self.seed, self.num_workers, self.rank, self.device = seed, num_workers, rank, device

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = epoch_permutation(len(self.split), self.seed, epoch)
        steps = self.steps_per_epoch - start_step
        positions = (
            torch.arange(start_step, self.steps_per_epoch).view(-1, 1) * self.global_batch_size
            + self.rank * self.local_batch_size
            + torch.arange(self.local_batch_size).view(1, -1)
        ).flatten()
        dataset = _AugmentedSamples(self.split, order[positions], positions, self.transforms, self.seed, epoch)
        loader = DataLoader(
            dataset,
            batch_size=self.local_batch_size,
            shuffle=False,
            num_workers=self.num_workers if steps > 0 else 0,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )
        non_blocking = self.device.type == "cuda"
        for views, index, labels in loader:
            yield Batch(
                views=[v.to(self.device, non_blocking=non_blocking) for v in views],
                index=index.to(self.device, non_blocking=non_blocking),
                labels=labels.to(self.device, non_blocking=non_blocking),
            )


def eval_batches(
    split: ImageSplit,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    crop_size: Optional[int] = None,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) batches for evaluation: normalized float32 on ``device``, in split order.

    In-memory images are used at their cached size; file-backed images are resized to
    ``crop_size/0.875`` and center-cropped to ``crop_size``.
    """
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    if split.images is not None:
        for start in range(0, len(split), batch_size):
            images = split.images[start : start + batch_size].to(device, non_blocking=True).float().div_(255.0)
            yield (images - mean_t) / std_t, split.labels[start : start + batch_size].to(device)
        return
    transform = eval_transform(crop_size or 224, mean, std, resize=True)
    dataset = _EvalFiles(split, transform)
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        yield images.to(device), labels.to(device)


class _EvalFiles(Dataset):
    def __init__(self, split: ImageSplit, transform: Transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.split.load(i)), int(self.split.labels[i])
