import pytest
import torch
from torchvision.io import write_png

from siamssl.data import DataConfig, build_dataset
from siamssl.errors import DataError


def _tree(root, classes=("cat", "dog"), per_class=3, size=8):
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.full((3, size, size), 40 * c + i, dtype=torch.uint8)
                write_png(image, str(folder / f"{i}.png"))


def test_imagefolder_decodes_once_and_caches(tmp_path):
    _tree(tmp_path / "data")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    data = build_dataset(cfg)
    assert data.classes == ["cat", "dog"]
    assert data.train.images.shape == (6, 3, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(data.train.images[4, 0, 0, 0]) == 41
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    again = build_dataset(cfg)  # served from the cache
    assert torch.equal(again.train.images, data.train.images)


def test_imagefolder_resizes_when_asked(tmp_path):
    _tree(tmp_path / "data", size=10)
    data = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), image_size=6, cache_dir=str(tmp_path / "c")))
    assert data.train.images.shape[-2:] == (6, 6)


def test_corrupt_image_error_names_the_file(tmp_path):
    _tree(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "dog" / "1.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"cannot decode image '{bad}'"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "c")))


def test_missing_root_and_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "nope")))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "flat")))
    with pytest.raises(DataError, match="data.root is not set"):
        build_dataset(DataConfig(dataset="cifar10", root=None))


def test_cifar_missing_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="CIFAR10 not found under"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=False))


def test_lazy_folder_keeps_paths(tmp_path):
    _tree(tmp_path / "data")
    data = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), in_memory=False))
    assert data.train.images is None and len(data.train.paths) == 6
    assert data.train.load(3).shape == (3, 8, 8)


def test_subset_is_a_fixed_random_sample_across_classes(tmp_path):
    _tree(tmp_path / "data", per_class=10)
    data = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), train_subset=8, cache_dir=str(tmp_path / "c")))
    assert len(data.train) == 8 and set(data.train.labels.tolist()) == {0, 1}
