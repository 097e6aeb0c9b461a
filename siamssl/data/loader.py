"""Deterministic, resumable training batches and evaluation batches.

The sample order of epoch ``e`` is a permutation drawn from ``(seed, e)``; global batch ``b`` is
positions ``[b·G, (b+1)·G)`` of it, and rank ``r`` of ``W`` takes the ``r``-th slice of ``G/W``.
:class:`TrainLoader` (``data.pipeline: torchvision``) seeds the augmentation of each sample by
``(seed, e, position)``; :class:`BatchedTrainLoader` (``data.pipeline: batched``) draws the random
parameters of the whole global batch ``b`` from ``(seed, e, b)`` and applies this rank's slice. So
with either loader, one process with batch 2B and two processes with batch B see the same images
with the same augmentations, and a run resumed at any step continues exactly where it stopped,
whatever the number of DataLoader workers.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from siamssl.data.augment import Transform, eval_transform, view_transforms
from siamssl.data.batched import BatchedAugment, to_device
from siamssl.data.config import DataConfig
from siamssl.data.datasets import ImageSplit
from siamssl.data.decode import FileBatches, PackedFiles, decode_batch
from siamssl.data.prefetch import Prefetcher
from siamssl.errors import ConfigError, DataError
from siamssl.methods.base import Batch

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A reproducible per-sample seed, distinct for every (seed, epoch, position)."""
    return ((seed * 1_000_003 + epoch) * _MIX + position * 0xBF58476D1CE4E5B9) & _MASK


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the augmentation draws of global batch ``step`` of ``epoch`` (distinct from every
    per-sample seed and from the epoch permutation's, which use positions ≥ 0 and −1)."""
    return sample_seed(seed, epoch, -2 - step)


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


def _check_batch(num_samples: int, global_batch_size: int, world_size: int) -> int:
    if global_batch_size % world_size:
        raise ConfigError(f"data.batch_size={global_batch_size} is not divisible by the {world_size} processes")
    steps = num_samples // global_batch_size
    if steps == 0:
        raise ConfigError(f"data.batch_size={global_batch_size} is larger than the training set ({num_samples} images)")
    return steps


def _local_positions(first_step: int, last_step: int, global_batch_size: int, rank: int, local_batch_size: int) -> Tensor:
    """This rank's positions in the epoch order for global batches ``first_step … last_step − 1``."""
    return (
        torch.arange(first_step, last_step).view(-1, 1) * global_batch_size
        + rank * local_batch_size
        + torch.arange(local_batch_size).view(1, -1)
    ).flatten()


class TrainLoader:
    """Training batches of this rank: ``batches(epoch, start_step)`` yields :class:`Batch` on ``device``.

    The per-sample torchvision pipeline (``data.pipeline: torchvision``): each sample is decoded and
    augmented by ``transforms`` in a DataLoader worker."""

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
        timeout_s: float = 300.0,
    ) -> None:
        self.steps_per_epoch = _check_batch(len(split), global_batch_size, world_size)
        self.timeout_s = timeout_s
        self.split, self.transforms = split, list(transforms)
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // world_size
        self.seed, self.num_workers, self.rank, self.device = seed, num_workers, rank, device

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = epoch_permutation(len(self.split), self.seed, epoch)
        steps = self.steps_per_epoch - start_step
        positions = _local_positions(start_step, self.steps_per_epoch, self.global_batch_size, self.rank, self.local_batch_size)
        dataset = _AugmentedSamples(self.split, order[positions], positions, self.transforms, self.seed, epoch)
        loader = DataLoader(
            dataset,
            batch_size=self.local_batch_size,
            shuffle=False,
            num_workers=self.num_workers if steps > 0 else 0,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            timeout=self.timeout_s if self.num_workers > 0 and steps > 0 else 0,
        )
        non_blocking = self.device.type == "cuda"
        for views, index, labels in _one_line_errors(loader):
            yield Batch(
                views=[v.to(self.device, non_blocking=non_blocking) for v in views],
                index=index.to(self.device, non_blocking=non_blocking),
                labels=labels.to(self.device, non_blocking=non_blocking),
            )


class BatchedTrainLoader:
    """Training batches of this rank from the batched engine (``data.pipeline: batched``).

    In-memory splits are moved to ``device`` once (uint8); each step gathers the batch by index and
    augments it there with :class:`~siamssl.data.batched.BatchedAugment`: no per-sample Python, no
    worker processes, and on a GPU no host synchronization (every random decision is drawn on the
    host and copied asynchronously).

    Splits of image files: ``num_workers`` DataLoader workers read the files of whole batches, each
    batch packed into one byte buffer (:mod:`siamssl.data.decode`: a few shared-memory segments per
    batch, not one per image). A background thread (:mod:`siamssl.data.prefetch`, on its own CUDA
    stream on a GPU) decodes them, ``prefetch_batches`` ahead of the training step: JPEGs on the
    device when ``decode_on_device`` (default: on GPUs; nvJPEG, with a per-image fallback to the CPU),
    every file in the workers otherwise; then crops, resizes (grouped by crop size,
    :mod:`siamssl.data.crops`) and augments the batch there. An unreadable file is replaced by another
    image of its batch with a warning naming it. A batch that takes longer than ``timeout_s`` ends
    the run with a one-line :class:`~siamssl.errors.DataError`.

    Determinism: the random parameters of global batch ``b`` of epoch ``e`` are drawn from
    ``(seed, e, b)`` for all its samples and each rank applies its slice, so the views depend
    neither on the number of processes nor on where a run resumed.
    """

    def __init__(
        self,
        split: ImageSplit,
        augment: BatchedAugment,
        global_batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device = torch.device("cpu"),
        decode_on_device: Optional[bool] = None,
        prefetch_batches: int = 2,
        timeout_s: float = 300.0,
    ) -> None:
        self.steps_per_epoch = _check_batch(len(split), global_batch_size, world_size)
        self.split, self.augment = split, augment
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // world_size
        self.seed, self.num_workers, self.rank, self.device = seed, num_workers, rank, device
        if prefetch_batches < 1:
            raise ConfigError(f"data.prefetch_batches must be >= 1, got {prefetch_batches}")
        if timeout_s < 0:
            raise ConfigError(f"data.loader_timeout_s must be >= 0 (0: no limit), got {timeout_s}")
        self.prefetch_batches, self.timeout_s = prefetch_batches, timeout_s
        self.labels = split.labels.to(device)
        self.images = split.images.to(device) if split.images is not None else None
        self.decode_on_device = device.type == "cuda" if decode_on_device is None else decode_on_device

    def draws(self, epoch: int, step: int):
        """This rank's slice of the augmentation draws of global batch ``step`` of ``epoch``."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, step))
        start = self.rank * self.local_batch_size
        return self.augment.draw(self.global_batch_size, generator).slice(start, start + self.local_batch_size)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = epoch_permutation(len(self.split), self.seed, epoch)
        if self.images is not None:
            for step in range(start_step, self.steps_per_epoch):
                positions = _local_positions(step, step + 1, self.global_batch_size, self.rank, self.local_batch_size)
                index = to_device(order[positions], self.device)
                views = self.augment(self.images.index_select(0, index), self.draws(epoch, step))
                yield Batch(views=views, index=index, labels=self.labels.index_select(0, index))
            return
        yield from self._file_batches(order, epoch, start_step)

    def _file_batches(self, order: Tensor, epoch: int, start_step: int) -> Iterator[Batch]:
        if self.split.paths is None:
            raise DataError("this split has neither images in memory nor file paths")
        positions = _local_positions(start_step, self.steps_per_epoch, self.global_batch_size, self.rank, self.local_batch_size)
        files = FileBatches(self.split.paths, order[positions].view(-1, self.local_batch_size), keep_jpeg_bytes=self.decode_on_device)
        workers = self.num_workers if len(files) > 0 else 0
        # batch_size=None: each worker returns whole packed batches (a few tensors each)
        loader = DataLoader(files, batch_size=None, shuffle=False, num_workers=workers, timeout=self.timeout_s if workers else 0)

        def produce(item: tuple[int, PackedFiles]) -> Batch:
            step, packed = item
            images, index = decode_batch(packed, self.device, self.split.paths)
            index = to_device(index, self.device)
            return Batch(views=self.augment(images, self.draws(epoch, step)), index=index, labels=self.labels.index_select(0, index))

        # the workers start here, in the calling thread; the background thread only draws from them
        prefetcher = Prefetcher(
            enumerate(iter(loader), start=start_step), produce, self.prefetch_batches, self.device, self.timeout_s, _loader_error
        )
        yield from prefetcher


def _one_line_errors(loader: DataLoader) -> Iterator:
    """Iterate ``loader``, its worker crashes and timeouts raised as one-line DataErrors."""
    iterator = iter(loader)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except RuntimeError as error:
            raise _loader_error(error) from None
        yield item


def _loader_error(error: BaseException) -> BaseException:
    """DataLoader failures (a worker killed, a timeout) as one line; DataErrors as they are."""
    if isinstance(error, DataError):
        return error
    if isinstance(error, RuntimeError):
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "timed out" in first_line:
            return DataError(f"the data loader stalled: {first_line} (data.loader_timeout_s sets this limit)")
        return DataError(f"the data loader failed: {first_line}")
    return error


AnyTrainLoader = Union[TrainLoader, BatchedTrainLoader]


def resolve_pipeline(cfg: DataConfig, split: ImageSplit, device: torch.device) -> str:
    """``data.pipeline``, with ``auto`` resolved: ``batched`` for in-memory splits or a GPU,
    ``torchvision`` for image files read on the CPU (per-sample decoding and cropping of large
    images parallelizes over DataLoader workers there)."""
    if cfg.pipeline != "auto":
        return cfg.pipeline
    return "batched" if split.in_memory or device.type == "cuda" else "torchvision"


def build_train_loader(
    split: ImageSplit,
    cfg: DataConfig,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device = torch.device("cpu"),
) -> AnyTrainLoader:
    """The training loader that ``cfg.pipeline`` selects (see :func:`resolve_pipeline`)."""
    if resolve_pipeline(cfg, split, device) == "batched":
        augment = BatchedAugment(cfg.augment, mean, std)
        return BatchedTrainLoader(
            split, augment, cfg.batch_size, seed, cfg.num_workers, rank, world_size, device,
            prefetch_batches=cfg.prefetch_batches, timeout_s=cfg.loader_timeout_s,
        )
    transforms = view_transforms(cfg.augment, mean, std)
    return TrainLoader(split, transforms, cfg.batch_size, seed, cfg.num_workers, rank, world_size, device, cfg.loader_timeout_s)


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
