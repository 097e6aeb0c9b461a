"""The image-file path of the batched pipeline: packed batches (few file descriptors), the
background prefetch thread, per-image decode fallback, the loader timeout, and the grouped resize
of crops of images of different sizes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import write_jpeg, write_png

from siamssl.data.batched import BatchedAugment, crop_boxes
from siamssl.data.config import AugmentConfig
from siamssl.data.crops import resized_crops_of_images, size_groups
from siamssl.data.datasets import ImageSplit
from siamssl.data.decode import JPEG_BYTES, PIXELS, UNREADABLE, decode_batch, read_batch
from siamssl.data.loader import BatchedTrainLoader
from siamssl.data.prefetch import LoaderStalled, Prefetcher
from siamssl.errors import CorruptImageWarning, DataError

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def random_images(count: int, seed: int = 0, low: int = 12, high: int = 40) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(low, high, (count, 2), generator=generator).tolist()
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def write_files(root: Path, images: list[torch.Tensor], png_every: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        png = png_every and i % png_every == 0
        path = root / (f"{i:04d}.png" if png else f"{i:04d}.jpg")
        (write_png if png else write_jpeg)(image, str(path))
        paths.append(str(path))
    return paths


def augment(crop_size: int = 16, **overrides) -> BatchedAugment:
    return BatchedAugment(AugmentConfig(crop_size=crop_size, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2], **overrides), MEAN, STD)


def collect(loader: BatchedTrainLoader, epoch: int = 0) -> list:
    return [(b.views, b.index, b.labels) for b in loader.batches(epoch)]


# ----------------------------------------------------------------------------------- packing


def test_a_packed_batch_is_a_few_tensors_whatever_its_size(tmp_path):
    images = random_images(9)
    paths = write_files(tmp_path, images, png_every=3)
    packed = read_batch(paths, list(range(9)), keep_jpeg_bytes=True)
    tensors = [packed.index, packed.kinds, packed.offsets, packed.shapes, packed.data]
    assert len(packed) == 9 and all(isinstance(t, torch.Tensor) for t in tensors)
    assert packed.kinds.tolist() == [PIXELS if i % 3 == 0 else JPEG_BYTES for i in range(9)]
    assert bytes(packed.item(1).numpy()) == Path(paths[1]).read_bytes()  # the JPEG's bytes, untouched
    assert torch.equal(packed.item(0).view(*packed.shapes[0].tolist()), images[0])  # PNG decoded, lossless
    decoded = read_batch(paths, [3, 1], keep_jpeg_bytes=False)
    assert decoded.kinds.tolist() == [PIXELS, PIXELS] and decoded.index.tolist() == [3, 1]


# ------------------------------------------------------------------------- decoding, fallback


def test_decoding_in_the_thread_equals_decoding_in_the_workers(tmp_path):
    """JPEG bytes decoded together in the loader thread (the GPU path, here on the CPU) give the
    same images as files decoded one by one in the workers."""
    paths = write_files(tmp_path, random_images(8), png_every=4)
    in_thread, index_a = decode_batch(read_batch(paths, range(8), keep_jpeg_bytes=True), torch.device("cpu"), paths)
    in_workers, index_b = decode_batch(read_batch(paths, range(8), keep_jpeg_bytes=False), torch.device("cpu"), paths)
    assert torch.equal(index_a, index_b)
    assert all(torch.equal(a, b) for a, b in zip(in_thread, in_workers))


@pytest.mark.parametrize("keep_jpeg_bytes", [True, False])
def test_a_corrupt_jpeg_costs_one_image_with_a_warning_naming_it(tmp_path, keep_jpeg_bytes):
    images = random_images(6)
    paths = write_files(tmp_path, images)
    broken = Path(paths[2])
    broken.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4)  # a JPEG marker, then garbage
    packed = read_batch(paths, range(6), keep_jpeg_bytes=keep_jpeg_bytes)
    with pytest.warns(CorruptImageWarning, match=broken.name):
        decoded, index = decode_batch(packed, torch.device("cpu"), paths)
    assert index.tolist() == [0, 1, 3, 3, 4, 5]  # replaced by the next readable sample of the batch
    assert decoded[2] is decoded[3] and len(decoded) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptImageWarning)
        clean, _ = decode_batch(read_batch(paths, [0, 1], keep_jpeg_bytes), torch.device("cpu"), paths)
    assert clean[0].shape == images[0].shape


def test_a_batch_without_a_readable_image_is_a_clear_error(tmp_path):
    paths = [str(tmp_path / "missing.jpg"), str(tmp_path / "gone.png")]
    with pytest.raises(DataError, match="no readable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decode_batch(read_batch(paths, [0, 1], keep_jpeg_bytes=True), torch.device("cpu"), paths)
    assert read_batch(paths, [0, 1], keep_jpeg_bytes=True).kinds.tolist() == [UNREADABLE, UNREADABLE]


def test_training_goes_on_over_a_corrupt_file(tmp_path):
    paths = write_files(tmp_path, random_images(16))
    Path(paths[5]).write_bytes(b"not an image at all")
    split = ImageSplit(labels=torch.arange(16) % 4, paths=paths)
    with pytest.warns(CorruptImageWarning, match="0005.jpg"):
        batches = collect(BatchedTrainLoader(split, augment(), 8, seed=0, decode_on_device=True))
    assert len(batches) == 2 and 5 not in torch.cat([b[1] for b in batches]).tolist()
    assert all(torch.isfinite(v).all() for b in batches for v in b[0])


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("num_workers", [0, 2])
def test_thread_pipeline_is_deterministic_and_equals_worker_decoding(tmp_path, num_workers):
    paths = write_files(tmp_path, random_images(24, seed=1), png_every=5)
    split = ImageSplit(labels=torch.arange(24) % 3, paths=paths)
    aug = augment(small_crops=1, small_crop_size=8)

    def run(decode_on_device: bool, workers: int = num_workers, depth: int = 2) -> list:
        loader = BatchedTrainLoader(split, aug, 8, seed=5, num_workers=workers, decode_on_device=decode_on_device, prefetch_batches=depth)
        return collect(loader, epoch=1)

    first = run(True)
    assert len(first) == 3 and [v.shape for v in first[0][0]] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)]
    for other in (run(True), run(False), run(True, workers=0, depth=1)):
        for (views_a, index_a, labels_a), (views_b, index_b, labels_b) in zip(first, other):
            assert torch.equal(index_a, index_b) and torch.equal(labels_a, labels_b)
            assert all(torch.equal(x, y) for x, y in zip(views_a, views_b))


def test_prefetcher_keeps_order_and_passes_errors_on():
    produced = []

    def produce(item: int) -> torch.Tensor:
        produced.append(item)
        if item == 5:
            raise ValueError("bad item 5")
        return torch.full((2,), item)

    out = []
    with pytest.raises(ValueError, match="bad item 5"):
        for value in Prefetcher(iter(range(10)), produce, depth=2, device=torch.device("cpu"), timeout_s=10):
            out.append(int(value[0]))
    assert out == [0, 1, 2, 3, 4]
    assert max(produced) == 5  # nothing was produced past the failure


def test_prefetcher_stays_within_its_depth_and_stops_when_abandoned():
    produced = []
    prefetcher = Prefetcher(iter(range(1000)), lambda i: produced.append(i) or i, depth=3, device=torch.device("cpu"), timeout_s=10)
    stream = iter(prefetcher)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1  # the one consumed, the queue, the one waiting to be queued
    stream.close()
    prefetcher._thread.join(timeout=5)
    assert not prefetcher._thread.is_alive()


# ---------------------------------------------------------------------------- never hang


def _release(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` go (open it for writing, then close: end of file)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_stalled_read_ends_with_a_one_line_error(tmp_path, num_workers):
    paths = write_files(tmp_path, random_images(8))
    fifo = tmp_path / "stalled.jpg"  # reading a FIFO without a writer blocks, like a hung file system
    os.mkfifo(fifo)
    paths[3] = str(fifo)
    split = ImageSplit(labels=torch.zeros(8, dtype=torch.long), paths=paths)
    loader = BatchedTrainLoader(split, augment(), 8, seed=0, num_workers=num_workers, timeout_s=1.5)
    started = time.perf_counter()
    try:
        with pytest.raises(DataError) as error:
            collect(loader)
    finally:
        _release(fifo)
    assert time.perf_counter() - started < 30
    message = str(error.value)
    assert "\n" not in message and "stalled" in message and "data.loader_timeout_s" in message


def test_a_stalled_read_in_the_per_sample_pipeline_ends_with_a_one_line_error(tmp_path):
    from siamssl.data.augment import view_transforms
    from siamssl.data.loader import TrainLoader

    paths = write_files(tmp_path, random_images(8, low=20, high=24))
    fifo = tmp_path / "stalled.jpg"
    os.mkfifo(fifo)
    paths[5] = str(fifo)
    split = ImageSplit(labels=torch.zeros(8, dtype=torch.long), paths=paths)
    loader = TrainLoader(split, view_transforms(AugmentConfig(crop_size=16), MEAN, STD), 4, seed=0, num_workers=1, timeout_s=1.5)
    try:
        with pytest.raises(DataError) as error:
            [b for b in loader.batches(0)]
    finally:
        _release(fifo)
    assert "\n" not in str(error.value) and "stalled" in str(error.value)


def test_no_batch_at_all_within_the_timeout_is_loader_stalled():
    release = threading.Event()

    def stalled():
        release.wait(10)
        yield 1

    try:
        with pytest.raises(LoaderStalled, match="no training batch for 0.5 s"):
            list(Prefetcher(stalled(), lambda x: x, depth=1, device=torch.device("cpu"), timeout_s=0.5))
    finally:
        release.set()


def test_batch_of_512_under_a_256_file_descriptor_limit(tmp_path):
    """The command of the report (ImageFolder, files decoded per batch, batch 512, 2 workers) in a
    process whose soft limit of open files is 256: it must finish, not hang. (Four batches per
    epoch, so that both workers have batches in flight: with one tensor per image this hung.)"""
    images = random_images(2048, seed=3, low=8, high=12)
    for split in ("train", "test"):
        for label in range(2):
            write_files(tmp_path / "data" / split / f"c{label}", images[label::2] if split == "train" else images[label:8:2])

    def limit_open_files() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    command = [
        sys.executable, "-m", "siamssl.train", "--config", str(REPO / "configs" / "quickstart.yaml"),
        "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}", "data.in_memory=false", "data.pipeline=batched",
        "data.batch_size=512", "data.num_workers=2", "trainer.max_steps=2", "data.augment.crop_size=8",
        "backbone.widths=[4,4,4,4]", "method.proj_dim=16", "method.pred_hidden_dim=8", "eval.monitors=[]",
        "data.loader_timeout_s=60", f"output_dir={tmp_path / 'run'}", "trainer.progress_bar=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, preexec_fn=limit_open_files, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").is_file()


# ------------------------------------------------------------------------- grouped resize


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_grouped_resize_matches_per_image_interpolate(interpolation):
    images = random_images(24, seed=4, low=6, high=70)
    views, size = 2, 20
    generator = torch.Generator().manual_seed(9)
    uniforms = torch.rand(views, len(images), 36, dtype=torch.float64, generator=generator)
    heights = torch.tensor([im.shape[1] for im in images])
    widths = torch.tensor([im.shape[2] for im in images])
    boxes = crop_boxes(uniforms, heights, widths, (0.08, 1.0), (3 / 4, 4 / 3))
    flip = torch.rand(views, len(images), generator=generator) < 0.5
    grouped = resized_crops_of_images(images, boxes, flip, size, interpolation, grouped=True).clamp(0.0, 1.0)
    for v in range(views):
        for n, image in enumerate(images):
            top, left, h, w = boxes[v, n].tolist()
            crop = image[:, top : top + h, left : left + w].unsqueeze(0).float()
            expected = F.interpolate(crop, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
            expected = (expected / 255.0).clamp(0.0, 1.0)[0]
            if flip[v, n]:
                expected = expected.flip(-1)
            torch.testing.assert_close(grouped[v, n], expected, atol=2e-5, rtol=0)


def test_crops_of_an_imagenet_like_batch_fall_in_few_size_groups():
    """512 crops (256 images of 375×500, RandomResizedCrop(0.08, 1)) need far fewer than 512 calls."""
    uniforms = torch.rand(2, 256, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    boxes = crop_boxes(uniforms, torch.full((256,), 375), torch.full((256,), 500), (0.08, 1.0), (3 / 4, 4 / 3))
    groups = size_groups(boxes[..., 2].flatten().tolist(), boxes[..., 3].flatten().tolist())
    assert sorted(i for group in groups for i in group) == list(range(512))
    assert len(groups) <= 48
    for group in groups:  # padding to the group's largest crop stays below 1.25² per side pair
        h, w = boxes[..., 2].flatten()[group], boxes[..., 3].flatten()[group]
        assert h.max() <= 1.25 * h.min() + 1 and w.max() <= 1.25 * w.min() + 1
