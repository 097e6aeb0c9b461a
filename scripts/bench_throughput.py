#!/usr/bin/env python
"""Throughput of siamssl's batched data pipeline against a standard per-sample torchvision
DataLoader pipeline, on the same machine, in the same run, with the same model.

Measures, for each pipeline, images/s of
  (a) augmentation alone: batches of two augmented views, ready on the training device;
  (b) the full training step: loading + augmentation + forward/backward/optimizer step of the
      method (SimSiam by default), driven by siamssl's Trainer with the same settings for both.
The two pipelines alternate within every repeat (A B, then B A, ...) so that a machine whose load
changes during the run affects both alike; the reported figure is the median over repeats and the
ratio is the median of the per-repeat ratios.

The torchvision pipeline is siamssl's ``data.pipeline=torchvision``: torchvision v2 transforms on
uint8 tensors (faster than the PIL transforms most SSL code uses), one sample at a time in
``--workers`` DataLoader worker processes. The batched pipeline is ``data.pipeline=batched``
(siamssl.data.batched): the uint8 dataset on the device, each batch augmented at once.

On a GPU it also counts the model FLOPs per image (forward + backward, torch.utils.flop_counter)
and reports the achieved TFLOP/s and, when the GPU's dense bf16 peak is known (or given with
--peak-tflops), the model FLOP utilization.

    python scripts/bench_throughput.py --device cpu --json out.json
    python scripts/bench_throughput.py --device cuda --json gpu.json          # ResNet-18, batch 512, bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402

from siamssl.data import PRESETS, build_train_loader  # noqa: E402
from siamssl.methods import Batch, TrainingProgress  # noqa: E402
from siamssl.schema import section_to_dict  # noqa: E402
from siamssl.config import apply_override, config_from_dict  # noqa: E402
from siamssl.train.trainer import _AMP_DTYPES, Trainer  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    parser.add_argument("--method", default="simsiam", help="a registered method (simsiam, byol, ...)")
    parser.add_argument("--backbone", default=None, help="default: resnet18 on a GPU, resnet_narrow on the CPU (both with the CIFAR stem)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 on a GPU, 128 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per pipeline and repeat (default 30 GPU, 3 CPU)")
    parser.add_argument("--aug-batches", type=int, default=None, help="timed augmentation batches per pipeline and repeat (default 30 GPU, 8 CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each measurement")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the torchvision pipeline (default: 2 on the CPU, min(8, cores) on a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default: all cores)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None, help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on for GPUs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (see --compile-mode)")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--augment", default="simsiam_cifar", choices=sorted(PRESETS), help="augmentation recipe")
    parser.add_argument("--image-size", type=int, default=32, help="size of the built-in dataset's images and of the crops")
    parser.add_argument("--data-root", default=None, help="an ImageFolder tree (train/<class>/...) instead of the built-in dataset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s for the utilization figure")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], int]) -> float:
    """Images per second of ``work`` (which returns the number of images it processed)."""
    synchronize(device)
    start = time.perf_counter()
    images = work()
    synchronize(device)
    return images / (time.perf_counter() - start)


def take(batches: Iterator[Batch], count: int, each: Callable[[Batch], None]) -> int:
    images = 0
    for _ in range(count):
        batch = next(batches)
        each(batch)
        images += batch.views[0].shape[0]
    return images


def build_config(args: argparse.Namespace, device: torch.device, run_dir: str) -> Any:
    gpu = device.type == "cuda"
    augment = section_to_dict(PRESETS[args.augment]())
    augment["crop_size"] = args.image_size
    batch_size = args.batch_size or (512 if gpu else 128)
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if gpu else 2)
    per_repeat = max(args.steps or (30 if gpu else 3), (args.aug_batches or (30 if gpu else 8)) + 2 * workers + 1) + 1
    raw: dict[str, Any] = {
        "method": {"name": args.method},
        "backbone": {"name": args.backbone or ("resnet18" if gpu else "resnet_narrow"), "cifar_stem": True},
        "data": {
            "batch_size": batch_size,
            "num_workers": workers,
            "augment": augment,
        },
        "trainer": {
            "device": str(device),
            "epochs": 1,
            "precision": args.precision or ("bf16" if gpu else "fp32"),
            "channels_last": args.channels_last if args.channels_last is not None else gpu,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "progress_bar": False,
            "log_every_steps": 10**9,
        },
        "eval": {"monitors": []},
        "output_dir": run_dir,
    }
    if args.data_root:
        raw["data"].update({"dataset": "imagefolder", "root": args.data_root})
    else:
        raw["data"].update({"dataset": "shapes", "shapes": {"num_train": batch_size * per_repeat, "num_test": 16, "image_size": args.image_size}})
    for override in args.overrides:
        apply_override(raw, override)
    return config_from_dict(raw)


def flops_per_image(trainer: Trainer, batch: Batch) -> float:
    """Model FLOPs of one training step (forward + backward) per image, as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = trainer.cfg
    progress = TrainingProgress(0, trainer.total_steps, 0, trainer.steps_per_epoch)
    if cfg.trainer.channels_last:
        batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(trainer.device.type, dtype=_AMP_DTYPES.get(cfg.trainer.precision), enabled=cfg.trainer.precision != "fp32"):
            outputs = trainer.model(batch, progress)
        outputs["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch.views[0].shape[0]


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" is tested before "H100"
        if key in name:
            return value
    return None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setting = args.device
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(setting)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = build_config(args, device, run_dir)
        trainer = Trainer(cfg)
        data = trainer.data
        loaders = {
            pipeline: build_train_loader(data.train, dataclasses.replace(cfg.data, pipeline=pipeline), data.mean, data.std, cfg.seed, device=device)
            for pipeline in ("torchvision", "batched")
        }
        steps = args.steps or (30 if device.type == "cuda" else 3)
        prefetched = 2 * cfg.data.num_workers  # DataLoader's default prefetch_factor is 2
        aug_batches = args.aug_batches or (30 if device.type == "cuda" else 8)
        print(
            f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads); {cfg.method.name} + {cfg.backbone.name}, "
            f"batch {cfg.data.batch_size}, {len(data.train)} images of {args.image_size}px, recipe {args.augment}, "
            f"{cfg.trainer.precision}, channels_last={cfg.trainer.channels_last}, compile={cfg.trainer.compile}; "
            f"torchvision pipeline with {cfg.data.num_workers} workers",
            flush=True,
        )

        # warm-up of the model (kernels, autotuning, allocator, compilation) and of both pipelines
        warm = loaders["batched"].batches(0)
        for _ in range(1 if device.type == "cpu" else 5):
            trainer._train_step(next(warm), 0)
        flops = flops_per_image(trainer, next(warm))
        warm.close()
        warm = loaders["torchvision"].batches(0)
        next(warm)
        warm.close()

        results: dict[str, dict[str, list[float]]] = {"aug": {p: [] for p in loaders}, "step": {p: [] for p in loaders}}
        epoch = 1
        for repeat in range(args.repeats):
            order = list(loaders) if repeat % 2 == 0 else list(reversed(loaders))
            for kind, count in (("aug", aug_batches), ("step", steps)):
                for pipeline in order:
                    generator = loaders[pipeline].batches(epoch)
                    epoch += 1
                    # Timing starts once the first batch is there (it waits for worker start-up). For
                    # augmentation alone the consumer is instantaneous, so the batches the workers
                    # prefetched meanwhile are drained first: the timed batches are produced while timed.
                    for _ in range(1 if kind == "step" else 1 + prefetched):
                        first = next(generator)
                    batches = itertools.chain([first], generator) if kind == "step" else generator
                    each = (lambda b: trainer._train_step(b, 0)) if kind == "step" else (lambda b: None)
                    rate = timed(device, lambda: take(batches, count, each))
                    generator.close()
                    results[kind][pipeline].append(rate)
                    print(f"  repeat {repeat + 1}/{args.repeats} {kind:4s} {pipeline:11s} {rate:10.1f} images/s", flush=True)

    summary: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python scripts/bench_throughput.py " + " ".join(shlex.quote(a) for a in argv),
        "torch": torch.__version__,
        "method": cfg.method.name,
        "backbone": cfg.backbone.name,
        "batch_size": cfg.data.batch_size,
        "image_size": args.image_size,
        "augment": args.augment,
        "precision": cfg.trainer.precision,
        "channels_last": cfg.trainer.channels_last,
        "compile": cfg.trainer.compile,
        "torchvision_workers": cfg.data.num_workers,
        "repeats": args.repeats,
        "steps_per_repeat": steps,
        "aug_batches_per_repeat": aug_batches,
    }
    for kind in ("aug", "step"):
        per = results[kind]
        summary[f"{kind}_images_per_s"] = {p: round(statistics.median(v), 1) for p, v in per.items()}
        summary[f"{kind}_images_per_s_all"] = {p: [round(x, 1) for x in v] for p, v in per.items()}
        ratios = [b / t for b, t in zip(per["batched"], per["torchvision"])]
        summary[f"{kind}_speedup"] = round(statistics.median(ratios), 2)
    summary["flops_per_image"] = flops
    batched_step = summary["step_images_per_s"]["batched"]
    summary["achieved_tflops"] = round(flops * batched_step / 1e12, 3)
    peak = peak_tflops(device, args.peak_tflops)
    summary["peak_tflops"] = peak
    summary["mfu"] = round(summary["achieved_tflops"] / peak, 4) if peak else None

    print(
        f"augmentation: batched {summary['aug_images_per_s']['batched']:.0f} vs torchvision {summary['aug_images_per_s']['torchvision']:.0f} "
        f"images/s -> aug_speedup {summary['aug_speedup']:.2f}x\n"
        f"training step: batched {summary['step_images_per_s']['batched']:.1f} vs torchvision {summary['step_images_per_s']['torchvision']:.1f} "
        f"images/s -> step_speedup {summary['step_speedup']:.2f}x\n"
        f"model FLOPs per image (fwd+bwd, all views) {flops / 1e9:.2f} GFLOP; achieved {summary['achieved_tflops']:.3f} TFLOP/s"
        + (f", MFU {summary['mfu']:.1%} of {peak:.0f} TFLOP/s" if peak else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
