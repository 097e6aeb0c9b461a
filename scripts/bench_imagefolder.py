#!/usr/bin/env python
"""Throughput of the ImageFolder path of the batched pipeline feeding a ResNet-50 at 224 px.

JPEG files (generated, ImageNet-like sizes, or an existing ``train/<class>/`` tree) are read by
DataLoader workers in packed batches, decoded (nvJPEG on a GPU), cropped, resized and augmented by
the background loader thread, and trained on by siamssl's Trainer with BYOL's ImageNet recipe
(``configs/byol_imagenet.yaml``: 2 views of 224 px, ResNet-50). Two figures, in images/s:

* ``loader_images_per_s``: the loader alone (batches ready on the device);
* ``step_images_per_s``: loader + the full training step (forward and backward of both views,
  optimizer step, momentum update), the number to compare with the target (≥ 3,000 images/s of
  2 views at 224 px on one H100).

    python scripts/bench_imagefolder.py --device cuda --json out.json
    python scripts/bench_imagefolder.py --device cpu --batch-size 8 --steps 2 --image-size 64 --crop-size 32 --backbone resnet18

From Python (the GPU acceptance script)::

    from scripts.bench_imagefolder import bench_imagefolder, check_file_pipeline
    check = check_file_pipeline("cuda")          # correctness first, seconds
    figures = bench_imagefolder(device="cuda", batch_size=256, steps=20)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from siamssl.config import apply_override, config_from_dict, load_raw  # noqa: E402
from siamssl.train.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_jpeg_folder(root: Path, count: int, height: int = 375, width: int = 500, classes: int = 4, seed: int = 0) -> Path:
    """``count`` JPEG files under ``root/train/<class>/`` (and 8 under ``root/val``): smooth random
    colour fields of about ``height`` × ``width`` (±20%, like ImageNet's photos; noise would make
    files several times larger than photos and slow to decode)."""
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(seed)
    specs = []
    for split, n in (("train", count), ("val", 8)):
        for i in range(n):
            h = int(height * (0.8 + 0.4 * torch.rand((), generator=generator)))
            w = int(width * (0.8 + 0.4 * torch.rand((), generator=generator)))
            specs.append((root / split / f"c{i % classes}" / f"{i:06d}.jpg", h, w, int(torch.randint(2**31, (), generator=generator))))
    for path, _, _, _ in specs:
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(spec: tuple[Path, int, int, int]) -> None:
        path, h, w, image_seed = spec
        coarse = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(image_seed))
        image = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1).mul(255).to(torch.uint8)[0]
        path.write_bytes(bytes(encode_jpeg(image, quality=90).numpy()))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, specs))
    return root


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_imagefolder(
    root: Optional[str] = None,
    device: str = "cuda",
    batch_size: int = 256,
    steps: int = 20,
    warmup: int = 3,
    num_workers: Optional[int] = None,
    prefetch_batches: int = 2,
    precision: str = "bf16",
    channels_last: bool = True,
    backbone: str = "resnet50",
    crop_size: int = 224,
    image_size: tuple[int, int] = (375, 500),
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Images/s of the ImageFolder → ResNet-50 (BYOL ImageNet recipe, 2 views) training step.

    Args:
        root: an ImageFolder tree with ``train/<class>/``; None generates ``batch_size × (warmup +
            steps)`` JPEGs of about ``image_size`` in a temporary folder (removed afterwards).
        device: ``cuda``, ``cuda:N`` or ``cpu``. batch_size: images per step (each gives 2 views).
        steps: timed steps (after ``warmup`` untimed ones, which include cuDNN's autotuning).
        num_workers: file-reading DataLoader workers (default: min(8, cores)).
        prefetch_batches: ``data.prefetch_batches``. precision / channels_last: the trainer's.
        backbone / crop_size: ResNet-50 at 224 px by default. overrides: extra ``key=value``.

    Returns a dict: ``loader_images_per_s``, ``step_images_per_s``, ``views_per_s`` (2 × images),
    the settings, and the files' count and mean size.
    """
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    needed = batch_size * (warmup + steps)
    with tempfile.TemporaryDirectory(prefix="siamssl-bench-") as scratch:
        if root is None:
            started = time.perf_counter()
            root = str(write_jpeg_folder(Path(scratch) / "data", needed, *image_size))
            generated_s = time.perf_counter() - started
        else:
            generated_s = 0.0
        raw = load_raw(str(REPO / "configs" / "byol_imagenet.yaml"))
        for override in (
            f"data.root={root}", f"data.batch_size={batch_size}", f"data.num_workers={workers}",
            f"data.prefetch_batches={prefetch_batches}", "data.pipeline=batched", f"data.augment.crop_size={crop_size}",
            f"backbone.name={backbone}", f"trainer.device={device}", f"trainer.precision={precision}",
            f"trainer.channels_last={str(channels_last).lower()}", "trainer.progress_bar=false", "trainer.log_every_steps=1000000",
            f"trainer.max_steps={warmup + steps}", "eval.monitors=[]", f"output_dir={Path(scratch) / 'run'}", *overrides,
        ):
            apply_override(raw, override)
        trainer = Trainer(config_from_dict(raw))
        if trainer.steps_per_epoch < warmup + steps:
            raise ValueError(f"{root} has {trainer.steps_per_epoch} batches of {batch_size}; need {warmup + steps}")
        paths = trainer.data.train.paths or []
        mean_kb = sum(os.path.getsize(p) for p in paths[:200]) / max(1, min(200, len(paths))) / 1024

        # the loader alone
        batches = trainer.loader.batches(0)
        for _ in range(warmup):
            next(batches)
        _synchronize(trainer.device)
        started = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
        _synchronize(trainer.device)
        loader_s = time.perf_counter() - started
        batches.close()

        # loader + training step
        batches = trainer.loader.batches(0)
        for _ in range(warmup):
            trainer._train_step(next(batches), 0)
        _synchronize(trainer.device)
        started = time.perf_counter()
        for _ in range(steps):
            trainer._train_step(next(batches), 0)
        _synchronize(trainer.device)
        step_s = time.perf_counter() - started
        batches.close()
    images = steps * batch_size
    return {
        "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "backbone": backbone,
        "crop_size": crop_size,
        "views": len(batch.views),
        "batch_size": batch_size,
        "steps": steps,
        "num_workers": workers,
        "prefetch_batches": prefetch_batches,
        "precision": precision,
        "channels_last": channels_last,
        "files": len(paths),
        "mean_file_kb": round(mean_kb, 1),
        "generated_s": round(generated_s, 1),
        "loader_images_per_s": round(images / loader_s, 1),
        "step_images_per_s": round(images / step_s, 1),
        "views_per_s": round(len(batch.views) * images / step_s, 1),
    }


def check_file_pipeline(device: str = "cuda", num_workers: int = 2) -> dict[str, Any]:
    """Correctness of the ImageFolder path on ``device`` in seconds (run it before timing it).

    On 26 generated files of different sizes (JPEGs, one PNG, one corrupt JPEG), batch 8, 2 global
    crops of 32 px and 2 local crops of 16 px:

    * ``same_indices_as_cpu`` / ``views_vs_cpu_mean_abs`` / ``views_vs_cpu_max_abs``: the device path
      (nvJPEG, grouped resize, loader thread on its own stream) against the CPU path (libjpeg in the
      workers, one ``F.interpolate`` per crop), in normalized units; decoders differ by a few levels
      (about 0.01-0.03 mean), a stream race or a wrong crop shows as far more;
    * ``repeat_max_abs``: the device path twice (0 up to kernel nondeterminism);
    * ``corrupt_warnings``: warnings naming the corrupt file (≥ 1, and the run went on);
    * ``grouped_resize_max_abs``: grouped resize against one ``F.interpolate`` per crop, both on ``device``.
    """
    import warnings

    from torchvision.io import encode_jpeg, encode_png

    from siamssl.data.batched import BatchedAugment, crop_boxes
    from siamssl.data.config import AugmentConfig
    from siamssl.data.crops import resized_crops_of_images
    from siamssl.data.datasets import ImageSplit
    from siamssl.data.loader import BatchedTrainLoader
    from siamssl.errors import CorruptImageWarning

    target = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    images = []
    with tempfile.TemporaryDirectory(prefix="siamssl-check-") as scratch:
        paths = []
        for i in range(26):
            h, w = (int(v) for v in torch.randint(48, 160, (2,), generator=generator))
            coarse = torch.rand(1, 3, 6, 8, generator=generator)
            image = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1).mul(255).to(torch.uint8)[0]
            images.append(image)
            path = Path(scratch) / (f"{i:03d}.png" if i == 7 else f"{i:03d}.jpg")
            encoded = encode_png(image) if i == 7 else encode_jpeg(image, quality=90)
            path.write_bytes(b"\xff\xd8" + bytes(range(200)) if i == 11 else bytes(encoded.numpy()))
            paths.append(str(path))
        split = ImageSplit(labels=torch.arange(26) % 4, paths=paths)
        augment = BatchedAugment(AugmentConfig(crop_size=32, small_crops=2, small_crop_size=16, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2]),
                                 (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

        def run(on: torch.device) -> tuple[list, list]:
            loader = BatchedTrainLoader(split, augment, 8, seed=0, num_workers=num_workers, device=on)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                batches = [([v.cpu() for v in b.views], b.index.cpu()) for b in loader.batches(0)]
            return batches, [str(w.message) for w in caught if issubclass(w.category, CorruptImageWarning)]

        on_device, corrupt = run(target)
        again, _ = run(target)
        on_cpu, _ = run(torch.device("cpu"))
    diffs = torch.cat([(a - b).abs().flatten() for (va, _), (vb, _) in zip(on_device, on_cpu) for a, b in zip(va, vb)])
    repeat = max(float((a - b).abs().max()) for (va, _), (vb, _) in zip(on_device, again) for a, b in zip(va, vb))

    sources = [im.to(target) for im in images[:12]]
    uniforms = torch.rand(2, 12, 36, dtype=torch.float64, generator=generator)
    boxes = crop_boxes(uniforms, torch.tensor([im.shape[1] for im in images[:12]]), torch.tensor([im.shape[2] for im in images[:12]]),
                       (0.08, 1.0), (3 / 4, 4 / 3))
    flip = torch.rand(2, 12, generator=generator) < 0.5
    grouped = resized_crops_of_images(sources, boxes, flip, 48, "bicubic", grouped=True)
    one_by_one = resized_crops_of_images(sources, boxes, flip, 48, "bicubic", grouped=False)
    return {
        "device": str(target),
        "batches": len(on_device),
        "same_indices_as_cpu": all(torch.equal(a, b) for (_, a), (_, b) in zip(on_device, on_cpu)),
        "views_vs_cpu_mean_abs": round(float(diffs.mean()), 4),
        "views_vs_cpu_max_abs": round(float(diffs.max()), 4),
        "repeat_max_abs": repeat,
        "corrupt_warnings": sum("011.jpg" in message for message in corrupt),
        "grouped_resize_max_abs": float((grouped - one_by_one).abs().max()),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="an ImageFolder tree (default: generated JPEGs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    parser.add_argument("--check-only", action="store_true", help="only check_file_pipeline (correctness, seconds)")
    args = parser.parse_args(argv)
    check = check_file_pipeline(args.device)
    print("\n".join(f"check {k}: {v}" for k, v in check.items()))
    if args.check_only:
        return 0
    figures = bench_imagefolder(
        args.root, args.device, args.batch_size, args.steps, args.warmup, args.workers, args.prefetch, args.precision,
        args.channels_last, args.backbone, args.crop_size, tuple(args.image_size), tuple(args.overrides),
    )
    width = max(len(k) for k in figures)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in figures.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
