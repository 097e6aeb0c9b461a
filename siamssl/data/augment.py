"""Augmentation recipes: the papers' presets as :class:`AugmentConfig` values, and the per-sample
torchvision pipeline that realises a recipe on uint8 image tensors."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from siamssl.data.config import AugmentConfig

Transform = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------- presets


def simsiam_cifar() -> AugmentConfig:
    """SimSiam's CIFAR recipe (paper App. D; simsiam issue #9): RandomResizedCrop(32, scale=(0.2, 1)),
    ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, flip, no blur."""
    return AugmentConfig()


def mocov2_imagenet(crop_size: int = 224) -> AugmentConfig:
    """MoCo v2 ``--aug-plus``, also SimSiam's ImageNet recipe: RRC (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1)
    p=0.8, grayscale 0.2, blur p=0.5 (σ 0.1-2), flip; identical views."""
    return AugmentConfig(crop_size=crop_size, blur_p=0.5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def byol_imagenet(crop_size: int = 224) -> AugmentConfig:
    """BYOL's asymmetric recipe (deepmind-research/byol ``augmentations.py``): RRC (0.08, 1) bicubic,
    jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur p 1.0 / 0.1, solarize p 0 / 0.2."""
    return AugmentConfig(
        crop_size=crop_size,
        crop_scale=(0.08, 1.0),
        interpolation="bicubic",
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=[1.0, 0.1],
        solarize_p=[0.0, 0.2],
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def simclr_cifar() -> AugmentConfig:
    """SimCLR's CIFAR recipe (google-research/simclr README): colour strength s=0.5, i.e. jitter
    (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, RRC (0.08, 1), no blur."""
    return AugmentConfig(crop_scale=(0.08, 1.0))


PRESETS: dict[str, Callable[[], AugmentConfig]] = {
    "simsiam_cifar": simsiam_cifar,
    "mocov2_imagenet": mocov2_imagenet,
    "byol_imagenet": byol_imagenet,
    "simclr_cifar": simclr_cifar,
}


# ------------------------------------------------------------------ per-sample torchvision path


def blur_kernel_size(crop_size: int) -> int:
    """Odd kernel covering about 10% of the crop (23 px at 224), as the TF/JAX reference code."""
    return max(3, int(0.1 * crop_size) // 2 * 2 + 1)


def _crop_pipeline(
    cfg: AugmentConfig, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float,
    mean: Sequence[float], std: Sequence[float],
) -> Transform:
    interpolation = InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else InterpolationMode.BILINEAR
    steps: list[Transform] = [
        v2.RandomResizedCrop(size, scale=scale, ratio=cfg.crop_ratio, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
    ]
    if cfg.jitter_p > 0 and any(cfg.jitter):
        brightness, contrast, saturation, hue = cfg.jitter
        steps.append(v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(cfg.grayscale_p))
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=cfg.blur_sigma)], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def view_transforms(cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> list[Transform]:
    """One transform per view: ``cfg.views`` global crops, then ``cfg.small_crops`` local crops.
    Each maps a uint8 (3, H, W) image to a normalized float32 crop."""
    mean = cfg.mean or mean
    std = cfg.std or std
    transforms = [
        _crop_pipeline(
            cfg, cfg.crop_size, cfg.crop_scale, cfg.view_probability("blur_p", v), cfg.view_probability("solarize_p", v),
            mean, std,
        )
        for v in range(cfg.views)
    ]
    small = _crop_pipeline(cfg, cfg.small_crop_size, cfg.small_crop_scale, cfg.small_blur_p, 0.0, mean, std)
    return transforms + [small] * cfg.small_crops


def eval_transform(crop_size: int, mean: Sequence[float], std: Sequence[float], resize: bool) -> Transform:
    """Evaluation preprocessing: (optionally) resize to crop/0.875 and center-crop, then normalize."""
    steps: list[Transform] = []
    if resize:
        steps += [v2.Resize(int(round(crop_size / 0.875)), antialias=True), v2.CenterCrop(crop_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
