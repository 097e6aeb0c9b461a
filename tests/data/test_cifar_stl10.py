"""CIFAR in both layouts (torchvision's pickled batches, an image folder) and STL-10's binary files,
from tiny fake files whose pixels encode their row, column and channel, so orientation is checked."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from torchvision.io import write_png

from siamssl.config import config_from_dict
from siamssl.data import DataConfig, build_dataset
from siamssl.data.config import STL10Config
from siamssl.data.datasets import CIFAR10_MEAN, CIFAR100_MEAN
from siamssl.errors import DataError
from siamssl.eval.monitors import MonitorContext, OnlineProbeMonitor, OnlineProbeOptions
from siamssl.methods import Batch
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw


def pattern(index: int, size: int) -> np.ndarray:
    """(3, size, size) uint8: red = row, green = column, blue = the image's index."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, index)]).astype(np.uint8)


def assert_pattern(images: torch.Tensor, indices: list[int]) -> None:
    size = images.shape[-1]
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, size, size)
    for image, index in zip(images, indices):
        assert torch.equal(image, torch.from_numpy(pattern(index, size))), f"image {index} is transposed or shuffled"


# ------------------------------------------------------------------------------------------- CIFAR


def write_cifar_batches(root, hundred: bool = False, per_batch: int = 2):
    """torchvision's extracted layout: CIFAR's Python pickles, each image a row of 3072 bytes
    (1024 red, 1024 green, 1024 blue, each 32x32 row-major)."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], ["test_batch"])
    if hundred:
        names = (["train"], ["test"])
    index = 0
    for files in names:
        for name in files:
            images = [pattern(index + i, 32) for i in range(per_batch)]
            entry = {"data": np.stack([im.reshape(-1) for im in images]), label_key: [(index + i) % 10 for i in range(per_batch)]}
            index += per_batch
            (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]} if hundred else {"label_names": [f"c{i}" for i in range(10)]}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))
    return folder


def test_cifar10_pickled_batches(tmp_path):
    write_cifar_batches(tmp_path)
    data = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=False))
    assert len(data.train) == 10 and len(data.test) == 2 and data.classes == [f"c{i}" for i in range(10)]
    assert_pattern(data.train.images, list(range(10)))
    assert_pattern(data.test.images, [10, 11])
    assert data.train.labels.tolist() == list(range(10)) and data.mean == CIFAR10_MEAN


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_batches_read_as_torchvision_reads_them(tmp_path, monkeypatch, hundred):
    # torchvision checks every file's md5 against the real dataset's, which fakes cannot match
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args: True)
    write_cifar_batches(tmp_path, hundred=hundred)
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    data = build_dataset(DataConfig(dataset="cifar100" if hundred else "cifar10", root=str(tmp_path), download=False))
    for ours, train in ((data.train, True), (data.test, False)):
        reference = cls(str(tmp_path), train=train)
        assert torch.equal(ours.images, torch.from_numpy(reference.data).permute(0, 3, 1, 2))
        assert ours.labels.tolist() == reference.targets
    assert data.classes == reference.classes


def test_cifar100_pickled_batches_with_root_at_the_batch_folder(tmp_path):
    folder = write_cifar_batches(tmp_path, hundred=True)
    data = build_dataset(DataConfig(dataset="cifar100", root=str(folder), download=False))
    assert len(data.classes) == 100 and data.mean == CIFAR100_MEAN
    assert_pattern(data.train.images, [0, 1])
    assert_pattern(data.test.images, [2, 3])


def write_cifar_folder(root, classes: int = 10, size: int = 32):
    """train/<class>/*.png and test/<class>/*.png, one image per class per split."""
    for split_index, split in enumerate(("train", "test")):
        for label in range(classes):
            folder = root / split / f"class{label:03d}"
            folder.mkdir(parents=True)
            write_png(torch.from_numpy(pattern(100 * split_index + label, size)), str(folder / "0.png"))


def test_cifar10_image_folder_is_detected(tmp_path):
    write_cifar_folder(tmp_path / "cifar10")
    data = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "cifar10"), cache_dir=str(tmp_path / "cache"), download=False))
    assert data.classes == [f"class{i:03d}" for i in range(10)]
    assert data.train.labels.tolist() == list(range(10)) and data.test.labels.tolist() == list(range(10))
    assert_pattern(data.train.images, list(range(10)))
    assert_pattern(data.test.images, list(range(100, 110)))
    assert data.mean == CIFAR10_MEAN  # CIFAR's statistics, as in the pickled layout


def test_cifar_image_folder_with_the_wrong_class_count(tmp_path):
    write_cifar_folder(tmp_path / "c", classes=3, size=8)
    with pytest.raises(DataError, match="has 3 class folders but CIFAR100 has 100; .*data.dataset=imagefolder"):
        build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path / "c"), cache_dir=str(tmp_path / "cache")))


def test_cifar_neither_layout_names_both(tmp_path):
    with pytest.raises(DataError, match="expected torchvision's 'cifar-10-batches-py' folder or an image folder"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=False))


# ------------------------------------------------------------------------------------------ STL-10


def write_stl10(root, train: int = 3, test: int = 2, unlabeled: int = 4, class_names: bool = True):
    """stl10_binary/ as in the official archive: images column-major per channel, labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)

    def images(first: int, count: int) -> bytes:
        return b"".join(np.ascontiguousarray(pattern(first + i, 96).transpose(0, 2, 1)).tobytes() for i in range(count))

    (folder / "train_X.bin").write_bytes(images(0, train))
    (folder / "train_y.bin").write_bytes(bytes([1 + i % 10 for i in range(train)]))
    (folder / "test_X.bin").write_bytes(images(100, test))
    (folder / "test_y.bin").write_bytes(bytes([10 - i % 10 for i in range(test)]))
    (folder / "unlabeled_X.bin").write_bytes(images(200, unlabeled))
    if class_names:
        (folder / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return folder


def test_stl10_reads_rows_and_columns_the_right_way_round(tmp_path):
    write_stl10(tmp_path)
    data = build_dataset(DataConfig(dataset="stl10", root=str(tmp_path)))
    assert_pattern(data.train.images, [0, 1, 2])
    assert_pattern(data.test.images, [100, 101])
    assert data.train.labels.tolist() == [0, 1, 2] and data.test.labels.tolist() == [9, 8]
    assert data.classes[:2] == ["airplane", "bird"] and len(data.classes) == 10
    pretrain = data.pretraining_split()
    assert_pattern(pretrain.images, [0, 1, 2, 200, 201, 202, 203])
    assert pretrain.labels.tolist() == [0, 1, 2, -1, -1, -1, -1]
    assert data.train.images.data_ptr() == pretrain.images.data_ptr()  # the labeled split is a view, not a copy


@pytest.mark.parametrize("split, expected", [("unlabeled", [200, 201, 202, 203]), ("train", [0, 1, 2])])
def test_stl10_pretraining_splits(tmp_path, split, expected):
    write_stl10(tmp_path, class_names=False)
    data = build_dataset(DataConfig(dataset="stl10", root=str(tmp_path / "stl10_binary"), stl10=STL10Config(split=split)))
    assert_pattern(data.pretraining_split().images, expected)
    assert_pattern(data.train.images, [0, 1, 2])  # evaluation keeps the labeled splits


def test_stl10_missing_and_malformed_files(tmp_path):
    folder = write_stl10(tmp_path)
    (folder / "unlabeled_X.bin").unlink()
    build_dataset(DataConfig(dataset="stl10", root=str(tmp_path), stl10=STL10Config(split="train")))  # not needed
    with pytest.raises(DataError, match="lacks unlabeled_X.bin"):
        build_dataset(DataConfig(dataset="stl10", root=str(tmp_path)))
    (folder / "test_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="not a multiple of one 96x96 RGB image"):
        build_dataset(DataConfig(dataset="stl10", root=str(tmp_path), stl10=STL10Config(split="train")))
    with pytest.raises(Exception, match="did you mean 'data.stl10.split'"):
        config_from_dict({"data": {"stl10": {"splt": "train"}}})


def test_pretraining_on_train_plus_unlabeled_evaluates_on_the_labeled_splits(tmp_path):
    write_stl10(tmp_path, train=8, test=4, unlabeled=16)
    raw = tiny_raw(tmp_path / "run", "data.dataset=stl10", f"data.root={tmp_path}", "data.batch_size=8",
                   "trainer.max_steps=2", "eval.monitors=[knn, online_probe]", "eval.knn.k=3")
    trainer = Trainer(config_from_dict(raw))
    assert trainer.steps_per_epoch == 3  # 24 pretraining images, batches of 8
    summary = trainer.fit()
    assert 0.0 <= summary["knn_top1"] <= 1.0 and 0.0 <= summary["online_probe_top1"] <= 1.0


def test_online_probe_ignores_unlabeled_images():
    """Unlabeled images (label -1) leave the probe exactly as the labeled part of the batch alone would."""
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    from siamssl.data.datasets import ImageSplit, LabeledImages

    split = ImageSplit(labels=torch.zeros(4, dtype=torch.long), images=images)
    data = LabeledImages(split, None, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3)
    context = MonitorContext(data, data.mean, data.std, torch.device("cpu"), batch_size=4, crop_size=8)
    mixed, labeled_only = (OnlineProbeMonitor(OnlineProbeOptions(batch_norm=False), context) for _ in range(2))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        features = torch.randn(8, 5, generator=generator)
        labels = torch.tensor([0, -1, 2, -1, 1, -1, 0, 2])
        keep = labels >= 0
        mixed.on_step(Batch(views=[], index=torch.arange(8), labels=labels), {"features": features})
        labeled_only.on_step(Batch(views=[], index=torch.arange(5), labels=labels[keep]), {"features": features[keep]})
    for key, value in mixed.classifier.state_dict().items():
        assert torch.allclose(value, labeled_only.classifier.state_dict()[key], atol=1e-6), key
    assert mixed.evaluate(None) == pytest.approx(labeled_only.evaluate(None), rel=1e-6)
