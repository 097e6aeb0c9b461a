"""Labeled image datasets, decoded once into uint8 arrays (or kept as file lists for large folders).

Registered: ``cifar10``/``cifar100`` (torchvision's format), ``imagefolder`` (``ROOT/train/<class>/*``
and ``ROOT/test/<class>/*`` or ``ROOT/val/<class>/*``) and ``shapes`` (built in, no download).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from siamssl.data.config import DataConfig
from siamssl.errors import DataError
from siamssl.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageSplit:
    """One split: uint8 images (N, 3, H, W) in memory, or image file paths decoded on demand."""

    labels: Tensor
    images: Optional[Tensor] = None
    paths: Optional[list[str]] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, count: Optional[int]) -> "ImageSplit":
        """``count`` samples drawn at random with a fixed seed, kept in split order (all when None).

        Random rather than the first ``count``: folder splits are sorted by class."""
        if count is None or count >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:count].sort().values
        return ImageSplit(
            labels=self.labels[keep],
            images=None if self.images is None else self.images[keep],
            paths=None if self.paths is None else [self.paths[i] for i in keep.tolist()],
        )

    def load(self, index: int) -> Tensor:
        """Sample ``index`` as a uint8 (3, H, W) tensor."""
        if self.images is not None:
            return self.images[index]
        assert self.paths is not None
        return decode_image_file(self.paths[index])


@dataclass
class LabeledImages:
    """A dataset: train split, optional test split, class names and per-channel mean/std in [0, 1]."""

    train: ImageSplit
    test: Optional[ImageSplit]
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DatasetBuilder = Callable[[DataConfig], LabeledImages]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_dataset(cfg: DataConfig) -> LabeledImages:
    """Build the configured dataset and apply ``train_subset``/``test_subset``."""
    data = DATASETS.get(cfg.dataset)(cfg)
    return LabeledImages(
        train=data.train.subset(cfg.train_subset),
        test=None if data.test is None else data.test.subset(cfg.test_subset),
        classes=data.classes,
        mean=data.mean,
        std=data.std,
    )


def decode_image_file(path: str) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W); a clear error names a corrupt or unreadable file."""
    try:
        with open(path, "rb") as handle:
            raw = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        return decode_image(raw, mode=ImageReadMode.RGB)
    except Exception as first_error:  # noqa: BLE001 — fall back to PIL for formats torchvision lacks
        try:
            import numpy as np
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
            return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        except Exception:  # noqa: BLE001
            raise DataError(f"cannot decode image '{path}': {first_error}") from None


def _cache_path(cfg: DataConfig, key: str) -> Path:
    base = Path(cfg.cache_dir or os.environ.get("SIAMSSL_CACHE", Path.home() / ".cache" / "siamssl"))
    return base / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def _atomic_torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------------
# CIFAR in torchvision's format


def _cifar(cfg: DataConfig, cls_name: str, mean: tuple, std: tuple) -> LabeledImages:
    import torchvision.datasets as tvd

    if cfg.root is None:
        raise DataError(f"data.root is not set: point it at the folder holding (or to receive) {cls_name}")
    cls = getattr(tvd, cls_name)
    splits = {}
    for train in (True, False):
        try:
            dataset = cls(cfg.root, train=train, download=False)
        except RuntimeError:
            if not cfg.download:
                raise DataError(f"{cls_name} not found under '{cfg.root}' (data.download=false)") from None
            try:
                dataset = cls(cfg.root, train=train, download=True)
            except Exception as exc:  # noqa: BLE001 — no network, blocked host...
                raise DataError(
                    f"{cls_name} not found under '{cfg.root}' and the download failed ({type(exc).__name__}); "
                    f"put torchvision's extracted '{cls.base_folder}' folder there, or use dataset=imagefolder "
                    f"with data.root holding train/<class>/ and test/<class>/"
                ) from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        splits[train] = ImageSplit(labels=torch.as_tensor(dataset.targets, dtype=torch.long), images=images)
    return LabeledImages(splits[True], splits[False], list(dataset.classes), mean, std)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> LabeledImages:
    """CIFAR-10 (Krizhevsky, 2009) in torchvision's format under ``data.root``."""
    return _cifar(cfg, "CIFAR10", CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> LabeledImages:
    """CIFAR-100 (Krizhevsky, 2009) in torchvision's format under ``data.root``."""
    return _cifar(cfg, "CIFAR100", CIFAR100_MEAN, CIFAR100_STD)


# --------------------------------------------------------------------------------------------------
# Image folders


def _list_folder(split_dir: Path, classes: Optional[list[str]]) -> tuple[list[str], list[int], list[str]]:
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"no class folders in '{split_dir}' (expected {split_dir}/<class>/<image>)")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"'{split_dir}' has classes missing from the train split: {', '.join(unknown[:5])}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths.extend(str(class_dir / f) for f in files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"no images in '{split_dir}' (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, classes


def _resize_center_crop(image: Tensor, size: int) -> Tensor:
    image = TF.resize(image, [size], antialias=True)
    return TF.center_crop(image, [size, size])


def _decode_all(paths: list[str], image_size: Optional[int]) -> Tensor:
    def load(path: str) -> Tensor:
        image = decode_image_file(path)
        return _resize_center_crop(image, image_size) if image_size else image

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        images = list(pool.map(load, paths))
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise DataError(
            f"images have different sizes ({len(shapes)} distinct, e.g. {sorted(shapes)[:2]}); "
            "set data.image_size to resize them, or data.in_memory=false"
        )
    return torch.stack(images)


def _split_dir(root: Path, names: tuple[str, ...]) -> Optional[Path]:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> LabeledImages:
    """Any ``ROOT/train/<class>/*`` tree, with ``ROOT/test`` or ``ROOT/val`` as the labeled test split.

    In memory (default), every image is decoded once (optionally resized to ``data.image_size``) and
    cached as a uint8 tensor in ``data.cache_dir`` (default ``~/.cache/siamssl``, or $SIAMSSL_CACHE);
    the cache key covers the file list, sizes and modification times.
    """
    if cfg.root is None:
        raise DataError("data.root is not set: point it at a folder with train/<class>/ (and test/<class>/)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root '{cfg.root}' does not exist")
    train_dir = _split_dir(root, ("train",))
    if train_dir is None:
        raise DataError(f"'{root}' has no train/ folder (expected {root}/train/<class>/<image>)")
    test_dir = _split_dir(root, ("test", "val"))
    train_paths, train_labels, classes = _list_folder(train_dir, None)
    listing = {"train": (train_paths, train_labels)}
    if test_dir is not None:
        test_paths, test_labels, _ = _list_folder(test_dir, classes)
        listing["test"] = (test_paths, test_labels)
    splits: dict[str, ImageSplit] = {}
    for name, (paths, labels) in listing.items():
        label_tensor = torch.tensor(labels, dtype=torch.long)
        if not cfg.in_memory:
            splits[name] = ImageSplit(labels=label_tensor, paths=paths)
            continue
        stats = [os.stat(p) for p in paths]
        key = repr((str(root.resolve()), name, cfg.image_size, [(p, s.st_size, s.st_mtime_ns) for p, s in zip(paths, stats)]))
        cache = _cache_path(cfg, key)
        if cache.exists():
            images = torch.load(cache, weights_only=True)
        else:
            images = _decode_all(paths, cfg.image_size)
            _atomic_torch_save(images, cache)
        splits[name] = ImageSplit(labels=label_tensor, images=images)
    mean, std = _folder_statistics(splits["train"])
    return LabeledImages(splits["train"], splits.get("test"), classes, mean, std)


def _folder_statistics(split: ImageSplit) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean/std of an in-memory split (ImageNet's for folders decoded on demand)."""
    if split.images is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return channel_statistics(split.images)


def channel_statistics(images: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std in [0, 1] of uint8 images (N, 3, H, W)."""
    sample = images[:: max(1, images.shape[0] // 5000)].double() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# The built-in dataset


@DATASETS.register("shapes")
def shapes(cfg: DataConfig) -> LabeledImages:
    """The built-in procedurally generated dataset (:mod:`siamssl.data.shapes`): no download, deterministic."""
    from siamssl.data.shapes import SHAPE_CLASSES, generate_shapes

    size = cfg.shapes.image_size
    layout = cfg.shapes.layout
    train_images, train_labels = generate_shapes(cfg.shapes.num_train, size, seed=0, layout=layout)
    test_images, test_labels = generate_shapes(cfg.shapes.num_test, size, seed=1, layout=layout)
    mean, std = channel_statistics(train_images)
    return LabeledImages(
        ImageSplit(labels=train_labels, images=train_images),
        ImageSplit(labels=test_labels, images=test_images),
        list(SHAPE_CLASSES),
        mean,
        std,
    )
