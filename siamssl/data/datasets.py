"""Labeled image datasets, decoded once into uint8 arrays (or kept as file lists for large folders).

Registered: ``cifar10``/``cifar100`` (torchvision's pickled batches or an image folder, detected),
``stl10`` (STL-10's binary files, with the unlabeled split for pretraining), ``imagefolder``
(``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` or ``ROOT/val/<class>/*``) and ``shapes``
(built in, no download).
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
    """A dataset: train split, optional test split, class names and per-channel mean/std in [0, 1].

    ``pretrain``: the images SSL pretraining draws from when they are not the labeled ``train`` split
    (STL-10's ``train+unlabeled``; label -1 marks an unlabeled image). Evaluation (kNN, linear probe)
    always uses ``train`` and ``test``."""

    train: ImageSplit
    test: Optional[ImageSplit]
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrain: Optional[ImageSplit] = None

    def pretraining_split(self) -> ImageSplit:
        """The split SSL pretraining iterates over."""
        return self.train if self.pretrain is None else self.pretrain


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
        pretrain=None if data.pretrain is None else data.pretrain.subset(cfg.train_subset),
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
# CIFAR: torchvision's pickled batches or an image folder


#: torchvision's extracted CIFAR layouts: folder, train files, test files, meta file, class-name key, label key
CIFAR_LAYOUTS = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "label_names", "labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def _unpickle(path: Path) -> dict:
    import pickle

    if not path.is_file():
        raise DataError(f"'{path}' is missing (an incomplete CIFAR folder?)")
    try:
        with path.open("rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 — truncated or foreign file
        raise DataError(f"'{path}' is not a CIFAR batch (a Python pickle): {type(exc).__name__}") from None


def read_cifar_batches(folder: Path, files: list[str], label_key: str) -> ImageSplit:
    """Images and labels of CIFAR's Python batches: each image a row of 3072 bytes, the red, green and
    blue 32×32 planes in row-major order (Krizhevsky's CIFAR page; what torchvision's CIFAR10 reads)."""
    import numpy as np

    rows, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        rows.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry[label_key])
    images = torch.from_numpy(np.concatenate(rows).reshape(-1, 3, 32, 32).copy())
    return ImageSplit(labels=torch.as_tensor(labels, dtype=torch.long), images=images)


def _cifar(cfg: DataConfig, cls_name: str, mean: tuple, std: tuple, num_classes: int) -> LabeledImages:
    """CIFAR under ``data.root`` in either layout: torchvision's extracted batches
    (``ROOT/cifar-10-batches-py/`` or ``cifar-100-python/``, or ``data.root`` pointing at that folder)
    or an image folder (``ROOT/train/<class>/*``, ``ROOT/test/<class>/*``, e.g. CIFAR as PNGs/JPEGs).
    Neither present: torchvision downloads the batches when ``data.download`` allows."""
    if cfg.root is None:
        raise DataError(f"data.root is not set: point it at the folder holding (or to receive) {cls_name}")
    folder_name, train_files, test_files, meta_file, names_key, label_key = CIFAR_LAYOUTS[cls_name]
    root = Path(cfg.root).expanduser()
    if (root / meta_file).is_file():  # data.root is the extracted batch folder itself
        root = root.parent
    folder = root / folder_name
    if not folder.is_dir() and (root / "train").is_dir():
        return _cifar_image_folder(cfg, cls_name, mean, std, num_classes)
    if not folder.is_dir():
        if not cfg.download:
            raise DataError(
                f"{cls_name} not found under '{cfg.root}' (data.download=false): expected torchvision's "
                f"'{folder_name}' folder or an image folder with train/<class>/ and test/<class>/"
            )
        import torchvision.datasets as tvd

        try:
            getattr(tvd, cls_name)(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 — no network, blocked host...
            raise DataError(
                f"{cls_name} not found under '{cfg.root}' and the download failed ({type(exc).__name__}); "
                f"put torchvision's extracted '{folder_name}' folder there, or an image folder "
                f"with train/<class>/ and test/<class>/"
            ) from None
    train = read_cifar_batches(folder, train_files, label_key)
    test = read_cifar_batches(folder, test_files, label_key)
    classes = list(_unpickle(folder / meta_file)[names_key])
    return LabeledImages(train, test, classes, mean, std)


def _cifar_image_folder(cfg: DataConfig, cls_name: str, mean: tuple, std: tuple, num_classes: int) -> LabeledImages:
    """CIFAR as an image folder: the class folders sorted by name (CIFAR-10's and CIFAR-100's class
    names are in alphabetical order, so the labels match the pickled layout's), with CIFAR's
    published statistics."""
    data = imagefolder(cfg)
    if len(data.classes) != num_classes:
        raise DataError(
            f"'{cfg.root}/train' has {len(data.classes)} class folders but {cls_name} has {num_classes}; "
            "for another image folder use data.dataset=imagefolder"
        )
    if data.test is None:
        raise DataError(f"'{cfg.root}' has train/ but no test/ folder (expected {cfg.root}/test/<class>/<image>)")
    return LabeledImages(data.train, data.test, data.classes, mean, std)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> LabeledImages:
    """CIFAR-10 (Krizhevsky, 2009) under ``data.root``: torchvision's batches or an image folder."""
    return _cifar(cfg, "CIFAR10", CIFAR10_MEAN, CIFAR10_STD, 10)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> LabeledImages:
    """CIFAR-100 (Krizhevsky, 2009) under ``data.root``: torchvision's batches or an image folder."""
    return _cifar(cfg, "CIFAR100", CIFAR100_MEAN, CIFAR100_STD, 100)


# --------------------------------------------------------------------------------------------------
# STL-10's binary files

STL10_FOLDER = "stl10_binary"
STL10_SIZE = 96
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def read_stl10_images(path: Path, into: Optional[Tensor] = None, chunk: int = 2048) -> Tensor:
    """uint8 images (N, 3, 96, 96) from an STL-10 ``*_X.bin`` file.

    Each image is 3 × 96 × 96 bytes, channel by channel, each channel in column-major order (Coates
    et al. 2011, the dataset's README; torchvision ``datasets/stl10.py`` reads it the same way:
    reshape (-1, 3, 96, 96) then swap the last two axes). Read in chunks straight into ``into`` (or a
    new tensor), so the 100,000 unlabeled images (2.8 GB) never exist twice in memory."""
    import numpy as np

    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    if size % image_bytes:
        raise DataError(f"'{path}' has {size} bytes, not a multiple of one 96x96 RGB image ({image_bytes} bytes)")
    count = size // image_bytes
    if into is None:
        into = torch.empty((count, 3, STL10_SIZE, STL10_SIZE), dtype=torch.uint8)
    if into.shape[0] != count:
        raise DataError(f"'{path}' holds {count} images, expected {into.shape[0]}")
    with path.open("rb") as handle:
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            raw = np.fromfile(handle, dtype=np.uint8, count=n * image_bytes).reshape(n, 3, STL10_SIZE, STL10_SIZE)
            into[start:start + n] = torch.from_numpy(raw).transpose(2, 3)
    return into


def read_stl10_labels(path: Path, count: int) -> Tensor:
    """0-based labels from an STL-10 ``*_y.bin`` file (one byte per image, 1 to 10)."""
    raw = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long() - 1
    if raw.numel() != count or (raw.numel() and (raw.min() < 0 or raw.max() > 9)):
        raise DataError(f"'{path}' does not hold {count} labels between 1 and 10")
    return raw


@DATASETS.register("stl10")
def stl10(cfg: DataConfig) -> LabeledImages:
    """STL-10 (Coates et al., 2011): 96×96 images, 5,000 labeled training images, 8,000 test images
    and 100,000 unlabeled ones, from ``data.root/stl10_binary/`` (``train_X.bin``, ``train_y.bin``,
    ``test_X.bin``, ``test_y.bin``, ``unlabeled_X.bin``; ``class_names.txt`` optional), the layout of
    the official archive and of torchvision. ``data.stl10.split`` chooses what pretraining draws from
    (``train+unlabeled``, the standard SSL protocol); kNN and linear evaluation use train and test.
    Mean/std: of the labeled training images."""
    if cfg.root is None:
        raise DataError(f"data.root is not set: point it at the folder holding {STL10_FOLDER}/")
    root = Path(cfg.root).expanduser()
    folder = root if root.name == STL10_FOLDER else root / STL10_FOLDER
    split = cfg.stl10.split
    needed = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"] + (["unlabeled_X.bin"] if "unlabeled" in split else [])
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"STL-10 not found: '{folder}' lacks {', '.join(missing)} (extract stl10_binary.tar.gz from "
            "https://cs.stanford.edu/~acoates/stl10/ under data.root)"
        )
    train_count = (folder / "train_X.bin").stat().st_size // (3 * STL10_SIZE * STL10_SIZE)
    unlabeled_count = (folder / "unlabeled_X.bin").stat().st_size // (3 * STL10_SIZE * STL10_SIZE) if "unlabeled" in split else 0
    # one buffer [train | unlabeled]: the labeled train split is a view of its head, not a copy
    images = torch.empty((train_count + unlabeled_count, 3, STL10_SIZE, STL10_SIZE), dtype=torch.uint8)
    read_stl10_images(folder / "train_X.bin", images[:train_count])
    if unlabeled_count:
        read_stl10_images(folder / "unlabeled_X.bin", images[train_count:])
    train = ImageSplit(labels=read_stl10_labels(folder / "train_y.bin", train_count), images=images[:train_count])
    test_images = read_stl10_images(folder / "test_X.bin")
    test = ImageSplit(labels=read_stl10_labels(folder / "test_y.bin", test_images.shape[0]), images=test_images)
    pretrain = None
    if split != "train":
        unlabeled = torch.full((unlabeled_count,), -1, dtype=torch.long)
        whole = ImageSplit(labels=torch.cat([train.labels, unlabeled]), images=images)
        pretrain = whole if split == "train+unlabeled" else ImageSplit(labels=unlabeled, images=images[train_count:])
    names_file = folder / "class_names.txt"
    classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()] if names_file.is_file() else STL10_CLASSES
    mean, std = channel_statistics(train.images)
    return LabeledImages(train, test, classes, mean, std, pretrain)


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
