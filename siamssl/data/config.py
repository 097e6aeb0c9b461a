"""Configuration of datasets and augmentation recipes (the ``data`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union


@dataclass
class AugmentConfig:
    """An augmentation recipe as data. ``views`` global crops, then ``small_crops`` local crops.

    Per-view probabilities (``blur_p``, ``solarize_p``) take one number for every view or a list with
    one value per global view (BYOL: ``blur_p: [1.0, 0.1]``, ``solarize_p: [0.0, 0.2]``).
    ``mean``/``std`` default to the dataset's statistics. Defaults: SimSiam's CIFAR recipe.
    """

    views: int = 2
    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: Union[float, list[float]] = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: Union[float, list[float]] = 0.0
    small_crops: int = 0
    small_crop_size: int = 96
    small_crop_scale: tuple[float, float] = (0.05, 0.14)
    small_blur_p: float = 0.5
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError("views must be >= 1")
        for name in ("blur_p", "solarize_p"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != self.views:
                raise ValueError(f"{name} has {len(value)} values but views is {self.views}")

    def view_probability(self, name: str, view: int) -> float:
        """``blur_p`` or ``solarize_p`` of global view ``view``."""
        value = getattr(self, name)
        return float(value[view]) if isinstance(value, list) else float(value)


@dataclass
class ShapesConfig:
    """The built-in procedurally generated dataset (``dataset: shapes``): split sizes, image size,
    and ``layout``: ``scattered`` (3-4 copies of the class shape per image, the demo) or ``single``
    (one large copy; easier, legible at 16 px)."""

    num_train: int = 10000
    num_test: int = 2000
    image_size: int = 32
    layout: Literal["scattered", "single"] = "scattered"


@dataclass
class STL10Config:
    """STL-10 (``dataset: stl10``): ``split`` is what SSL pretraining draws from: ``train+unlabeled``
    (5,000 labeled + 100,000 unlabeled images, the standard protocol), ``unlabeled`` or ``train``.
    The kNN monitor and linear evaluation always use the labeled train and test splits."""

    split: Literal["train+unlabeled", "unlabeled", "train"] = "train+unlabeled"


@dataclass
class DataConfig:
    """``dataset``: a registered dataset (cifar10, cifar100, stl10, imagefolder, shapes).

    ``root``: where the dataset lives (CIFAR: torchvision's batches or an image folder with
    ``train/<class>/`` and ``test/<class>/``; STL-10: ``stl10_binary/``; imagefolder: ``train/`` and
    ``test/`` (or ``val/``) class folders). ``batch_size`` is the **global** batch
    over all processes. ``pipeline``: ``batched`` (the whole batch augmented at once on the training
    device, :mod:`siamssl.data.batched`; image files decoded by the GPU when there is one),
    ``torchvision`` (per-sample transforms in DataLoader workers) or ``auto`` (batched for in-memory
    datasets and on GPUs, torchvision for image files read on the CPU).
    ``image_size``: resize+center-crop folder images to this size when caching them in memory (None:
    keep the native size, which must then be the same for every image). ``in_memory``: decode once
    into a uint8 cache (small datasets); False decodes files every epoch (ImageNet-scale folders).
    ``train_subset``/``test_subset``: use N images of a split, a fixed random sample (quick runs).
    ``prefetch_batches``: batches of image files that the batched pipeline decodes and augments ahead
    of the training step, in a background thread (on its own CUDA stream on a GPU).
    ``loader_timeout_s``: the longest wait for one training batch of files before the run stops with
    a one-line error (a hung file system or a stuck worker); 0 waits forever.
    """

    dataset: str = "cifar10"
    root: Optional[str] = None
    batch_size: int = 512
    num_workers: int = 2
    pipeline: Literal["auto", "batched", "torchvision"] = "auto"
    in_memory: bool = True
    image_size: Optional[int] = None
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    cache_dir: Optional[str] = None
    prefetch_batches: int = 2
    loader_timeout_s: float = 300.0
    download: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    stl10: STL10Config = field(default_factory=STL10Config)
