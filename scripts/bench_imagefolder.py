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

    from scripts.bench_imagefolder import bench_imagefolder
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
    args = parser.parse_args(argv)
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
