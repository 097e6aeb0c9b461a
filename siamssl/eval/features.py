"""Features for the evaluations: augmented views (positive pairs for alignment) and the
representation diagnostics of a method on a split, shared by the ``diagnostics`` monitor, the
diagnostics command and the report."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from siamssl.data.augment import view_transforms
from siamssl.data.config import AugmentConfig
from siamssl.data.datasets import ImageSplit
from siamssl.data.loader import eval_batches, sample_seed
from siamssl.eval.diagnostics import alignment, summarize
from siamssl.eval.knn import extract_features
from siamssl.eval.sharding import gather_rows, shard_bounds, shard_split
from siamssl.distributed import rank, world_size
from siamssl.methods.base import SSLMethod


@torch.no_grad()
def augmented_view_features(
    embed: Callable[[Tensor], Tensor],
    split: ImageSplit,
    augment: AugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    autocast_dtype: Optional[torch.dtype] = None,
    distributed: bool = False,
) -> list[Tensor]:
    """``embed`` of ``augment.views`` augmented views of every sample of ``split``: a list with one
    (N, D) float32 tensor per view, row i of each being sample i (so views 0 and 1 are positive pairs).

    Each sample's augmentation is seeded by ``(seed, index)`` inside a forked RNG, so the result is
    reproducible and the global random state (hence training) is untouched. ``distributed``: under
    torchrun each rank embeds its slice of the samples and every rank gets all rows (called on every
    rank); ``autocast_dtype``: embed under that autocast."""
    transforms = view_transforms(augment, mean, std)
    outputs: list[list[Tensor]] = [[] for _ in transforms]
    first, stop = shard_bounds(len(split), rank(), world_size()) if distributed else (0, len(split))
    for start in range(first, stop, batch_size):
        views: list[list[Tensor]] = [[] for _ in transforms]
        for index in range(start, min(start + batch_size, stop)):
            image = split.load(index)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(seed, 0, index))
                for view, transform in zip(views, transforms):
                    view.append(transform(image))
        for output, view in zip(outputs, views):
            images = torch.stack(view).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                output.append(embed(images).float())
    local = [torch.cat(output) for output in outputs]
    return [gather_rows(values, len(split)) for values in local] if distributed else local


def has_projector(method: SSLMethod) -> bool:
    """Whether the method overrides :meth:`SSLMethod.project` (has projector features to evaluate)."""
    return type(method).project is not SSLMethod.project


@torch.no_grad()
def measure_representation(
    method: SSLMethod,
    split: ImageSplit,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    crop_size: int,
    batch_size: int = 256,
    max_samples: Optional[int] = 1000,
    with_alignment: bool = True,
    alpha: float = 2.0,
    t: float = 2.0,
    seed: int = 0,
    num_workers: int = 0,
    autocast_dtype: Optional[torch.dtype] = None,
    distributed: bool = False,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """The diagnostics of :func:`siamssl.eval.diagnostics.summarize` for the backbone features
    (``feat_*``) and, when the method has ``project``, the projector output (``emb_*``), on
    ``max_samples`` of ``split`` with the method in eval mode; alignment uses two augmented views of
    each image (SimSiam's CIFAR recipe at ``crop_size``, seeded by ``seed``). ``autocast_dtype``:
    embed under that autocast (the training run's). ``distributed``: call it on every rank of a
    torchrun job; each embeds its slice of the samples, and every rank gets the same results.

    Returns the scalars and the center-view features per prefix (for spectra and pictures)."""
    subset = split.subset(max_samples)
    kinds: dict[str, Callable[[Tensor], Tensor]] = {"feat": method.embed}
    if has_projector(method):
        kinds["emb"] = method.project
    was_training = method.training
    method.eval()
    scalars: dict[str, float] = {}
    features: dict[str, Tensor] = {}
    try:
        for prefix, embed in kinds.items():
            part = shard_split(subset) if distributed else subset
            values, _ = extract_features(embed, eval_batches(part, batch_size, mean, std, device, crop_size, num_workers), autocast_dtype)
            if distributed:
                values = gather_rows(values, len(subset))
            summary = summarize(values, t=t)
            if with_alignment:
                view_1, view_2 = augmented_view_features(
                    embed, subset, AugmentConfig(crop_size=crop_size), mean, std, device, batch_size, seed, autocast_dtype, distributed
                )
                summary["alignment"] = alignment(view_1, view_2, alpha)
            scalars.update({f"{prefix}_{k}": v for k, v in summary.items()})
            features[prefix] = values
    finally:
        method.train(was_training)
    return scalars, features
