#!/usr/bin/env python
"""Everything a GPU can tell about siamssl, in one call that fits a short lease.

    python scripts/gpu_acceptance.py --cifar PATH --out DIR [--budget-s 480]
    python scripts/gpu_acceptance.py --dry-run --out DIR        # every stage at toy size on the CPU

``PATH`` is the CIFAR-10 image folder (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) or its
``.tar.gz``. Stages, in order, each with a share of the budget (a stage that runs out of time records
what it skipped instead of overrunning):

1. machine: GPU, driver, torch, CUDA, cuDNN, CPU cores;
2. throughput: the 2-view ResNet-18 CIFAR training step (SimSiam, batch 512) fed by siamssl's batched
   pipeline and by a per-sample torchvision pipeline (8 workers), in fp32 and bf16, with and without
   channels_last and torch.compile: images/s, model FLOPs per image, achieved TFLOP/s and MFU
   (against the dense bf16 peak);
3. imagefolder: the ImageFolder path's correctness check (device vs CPU decoding, a corrupt file, the grouped
   resize), then a ResNet-50 224-px 2-view step (BYOL) fed by it from generated JPEGs
   (``scripts/bench_imagefolder.py``);
4. correctness: 20 steps of every method's CIFAR recipe in bf16 and in fp16 with gradient scaling:
   finite losses, and the host synchronizations inside the step (``torch.cuda.set_sync_debug_mode``);
5. learning: BYOL on the CIFAR-10 JPEG copy under lightly's benchmark protocol, as many epochs as the
   remaining budget allows (a complete cosine schedule over those epochs), then kNN (k=200, T=0.1)
   on the full train/test split, next to lightly's published figure.

Writes ``DIR/gpu_acceptance.json`` (every figure) and ``DIR/gpu_acceptance.md`` (tables), and prints
the tables last.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

import torch  # noqa: E402
import yaml  # noqa: E402

from siamssl.config import apply_override, config_from_dict  # noqa: E402
from siamssl.data import build_train_loader  # noqa: E402
from siamssl.methods import METHODS, Batch  # noqa: E402
from siamssl.runtime import record_host_syncs  # noqa: E402
from siamssl.train.trainer import Trainer  # noqa: E402

from scripts.bench_imagefolder import bench_imagefolder, check_file_pipeline, write_jpeg_folder  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; MFU is quoted against these.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
# lightly's CIFAR-10 benchmark (ANCHORS.md): kNN top-1, max over 200 epochs, ResNet-18, one RTX A6000.
LIGHTLY_CIFAR10_KNN = {("byol", 128, 200): 0.869, ("byol", 512, 200): 0.868, ("byol", 512, 800): 0.910}


# ----------------------------------------------------------------------------------------- budget


class Budget:
    """Wall-clock budget shared by the stages; each stage gets a deadline from its share."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def deadline(self, share_of_left: float) -> float:
        """A deadline (perf_counter time) after ``share_of_left`` of the remaining budget."""
        if math.isinf(self.seconds):
            return math.inf
        return time.perf_counter() + max(0.0, self.left()) * share_of_left


def before(deadline: float) -> bool:
    return time.perf_counter() < deadline


# -------------------------------------------------------------------------------------------- data


def prepare_cifar(path: Optional[str], work: Path) -> Optional[Path]:
    """The CIFAR-10 image folder: ``path`` itself, or its tarball extracted under ``work``."""
    if path is None:
        return None
    source = Path(path)
    if source.is_dir():
        root = source if (source / "train").is_dir() else next((p for p in source.iterdir() if (p / "train").is_dir()), None)
        if root is None:
            raise SystemExit(f"error: {source} has no train/ folder (expected train/<class>/*.jpg)")
        return root
    if not source.is_file():
        raise SystemExit(f"error: --cifar {source} does not exist")
    target = work / "cifar10"
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source) as archive:
            archive.extractall(target, filter="data")
    found = [p for p in [target, *target.iterdir()] if (p / "train").is_dir()]
    if not found:
        raise SystemExit(f"error: {source} holds no train/ folder")
    return found[0]


# ------------------------------------------------------------------------------------------ config


def recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())


def build(raw: dict[str, Any], overrides: list[str]) -> Any:
    raw = json.loads(json.dumps(raw))
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)


def shapes_data(batch_size: int, batches: int, image_size: int) -> list[str]:
    """Overrides that feed a run with the built-in dataset: enough images for ``batches`` batches."""
    return [
        "data.dataset=shapes", f"data.batch_size={batch_size}", "data.num_workers=0",
        f"data.shapes.num_train={batch_size * batches}", "data.shapes.num_test=64",
        f"data.shapes.image_size={image_size}", f"data.augment.crop_size={image_size}",
    ]


def quiet_trainer(output_dir: Path, extra: list[str]) -> list[str]:
    return [
        f"output_dir={output_dir}", "trainer.overwrite=true", "trainer.progress_bar=false",
        "trainer.log_every_steps=1000000", "eval.monitors=[]", *extra,
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(trainer: Trainer, batch: Batch) -> float:
    """Model FLOPs of one training step (forward + backward, all views) per image, as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from siamssl.methods import TrainingProgress

    progress = TrainingProgress(0, trainer.total_steps, 0, trainer.steps_per_epoch)
    views = [v.contiguous(memory_format=torch.channels_last) if trainer.channels_last else v for v in batch.views]
    precision = trainer.precision  # resolved: the config may say auto
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(trainer.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = trainer.method(Batch(views, batch.index, batch.labels), progress)
        outputs["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch.views[0].shape[0]


def peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def timed_steps(trainer: Trainer, batches: Iterator[Batch], count: int, deadline: float) -> tuple[float, int]:
    """Images/s of up to ``count`` training steps (stops early at ``deadline``), data loading included."""
    device = trainer.device
    synchronize(device)
    start = time.perf_counter()
    images = steps = 0
    for batch in batches:
        trainer._train_step(batch, 0)
        images += batch.views[0].shape[0]
        steps += 1
        if steps >= count or not before(deadline):
            break
    synchronize(device)
    return images / (time.perf_counter() - start), steps


# ------------------------------------------------------------------------------------------ stages


def stage_machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu_cores": os.cpu_count(), "device": str(device),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a core dependency
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
            peak_bf16_tflops=peak_tflops(device),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["nvidia_smi"] = "unavailable"
    return info


def throughput_cells(dry_run: bool) -> list[tuple[str, bool, bool]]:
    """(precision, channels_last, compile), most informative first, so a short budget keeps those.
    The dry run takes the two extremes, which between them exercise every code path."""
    if dry_run:
        return [("fp32", False, False), ("bf16", True, True)]
    return [("bf16", True, False), ("fp32", False, False), ("bf16", True, True), ("bf16", False, False),
            ("fp32", True, False), ("fp32", False, True), ("bf16", False, True), ("fp32", True, True)]


def stage_throughput(device: torch.device, work: Path, deadline: float, dry_run: bool) -> dict[str, Any]:
    gpu = device.type == "cuda"
    batch_size, image_size = (512, 32) if gpu else (16, 16)
    steps, warmup = (30, 5) if gpu else (2, 1)
    workers = min(8, os.cpu_count() or 1) if gpu else 0
    backbone = ["backbone.name=resnet18", "backbone.cifar_stem=true"] if gpu else [
        "backbone.name=resnet_narrow", "backbone.cifar_stem=true", "backbone.widths=[8, 16, 16, 32]"]
    per_pipeline = steps + warmup + 2
    rows: list[dict[str, Any]] = []
    flops: Optional[float] = None  # the same model in every cell: counted once, outside torch.compile
    for precision, channels_last, compiled in throughput_cells(dry_run):
        row: dict[str, Any] = {"precision": precision, "channels_last": channels_last, "compile": compiled}
        rows.append(row)
        if not before(deadline):
            row["skipped"] = "budget"
            continue
        compile_keys = [f"trainer.compile={str(compiled).lower()}"]
        if compiled and not gpu:
            compile_keys.append("trainer.compile_backend=eager")  # the dry run exercises the wrapper, not inductor
        cfg = build(recipe("simsiam"), [
            *shapes_data(batch_size, 2 * per_pipeline, image_size), *backbone, f"data.num_workers={workers}",
            *quiet_trainer(work / "throughput", [f"trainer.device={device}", f"trainer.precision={precision}",
                                                 f"trainer.channels_last={str(channels_last).lower()}", *compile_keys]),
        ])
        try:
            trainer = Trainer(cfg)
            data = trainer.data
            started = time.perf_counter()
            warm = trainer.loader.batches(0)
            for _ in range(warmup):
                trainer._train_step(next(warm), 0)
            synchronize(device)
            row["warmup_s"] = round(time.perf_counter() - started, 1)
            if flops is None and not compiled:
                flops = flops_per_image(trainer, next(warm))
            if flops is not None:
                row["flops_per_image"] = flops
            warm.close()
            for pipeline in ("batched", "torchvision"):
                loader = build_train_loader(
                    data.train, dataclasses.replace(cfg.data, pipeline=pipeline), data.mean, data.std, cfg.seed, device=device
                )
                batches = loader.batches(1)
                trainer._train_step(next(batches), 0)  # the first batch waits for worker start-up
                rate, done = timed_steps(trainer, batches, steps, deadline)
                batches.close()
                row[f"{pipeline}_images_per_s"] = round(rate, 1)
                row[f"{pipeline}_steps"] = done
            peak = peak_tflops(device)
            if flops is not None:
                achieved = flops * row["batched_images_per_s"] / 1e12
                row["achieved_tflops"] = round(achieved, 3)
                row["mfu"] = round(achieved / peak, 4) if peak else None
            row["speedup"] = round(row["batched_images_per_s"] / row["torchvision_images_per_s"], 2)
        except Exception as error:  # a failing cell is a result, the others still run
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            row["traceback"] = traceback.format_exc(limit=6)
        finally:
            trainer = None
            if gpu:
                torch.cuda.empty_cache()
    return {"batch_size": batch_size, "image_size": image_size, "timed_steps": steps, "torchvision_workers": workers,
            "method": "simsiam", "backbone": "resnet18 (CIFAR stem)" if gpu else "resnet_narrow (toy)", "cells": rows}


def stage_imagefolder(device: torch.device, deadline: float) -> dict[str, Any]:
    """The ImageFolder path's correctness check, then its ResNet-50 throughput (scripts/bench_imagefolder.py)."""
    gpu = device.type == "cuda"
    if not before(deadline):
        return {"skipped": "budget"}
    result: dict[str, Any] = {}
    try:
        result["check"] = check_file_pipeline(str(device), num_workers=2 if gpu else 0)
        if not before(deadline):
            return {**result, "skipped": "budget (after the check)"}
        if gpu:
            result["bench"] = bench_imagefolder(device=str(device), batch_size=256, steps=20, warmup=3)
        else:
            result["bench"] = bench_imagefolder(device="cpu", batch_size=4, steps=1, warmup=1, num_workers=0, backbone="resnet18",
                                                crop_size=32, image_size=(48, 64))
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        result["traceback"] = traceback.format_exc(limit=6)
    return result


def library_methods() -> list[str]:
    """The registered methods siamssl ships (not ones a caller registered for itself)."""
    return sorted(name for name in METHODS.names() if METHODS.get(name).__module__.startswith("siamssl."))


def method_recipes() -> dict[str, str]:
    """Each registered method's CIFAR recipe (the first ``configs/*.yaml`` without ``_imagenet`` naming it)."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.stem.endswith("_imagenet") or path.stem == "quickstart":
            continue
        name = yaml.safe_load(path.read_text()).get("method", {}).get("name")
        if name in library_methods() and name not in found:
            found[name] = path.stem
    return found


def stage_correctness(device: torch.device, work: Path, deadline: float) -> dict[str, Any]:
    gpu = device.type == "cuda"
    batch_size, image_size, steps = (128, 32, 20) if gpu else (8, 16, 1)
    precisions = ["bf16", "fp16"] if gpu else ["bf16"]
    recipes = method_recipes()
    rows: list[dict[str, Any]] = []
    missing = sorted(set(library_methods()) - set(recipes))
    for method, name in sorted(recipes.items()):
        for precision in precisions:
            row: dict[str, Any] = {"method": method, "recipe": name, "precision": precision}
            rows.append(row)
            if not before(deadline):
                row["skipped"] = "budget"
                continue
            raw = recipe(name)
            raw.get("data", {}).pop("root", None)
            extra = [] if gpu else ["data.augment.small_crop_size=8"] if raw.get("data", {}).get("augment", {}).get("small_crops") else []
            if not gpu and "offsets" in raw.get("method", {}):
                extra.append("method.offsets=[1]")  # a patch-grid method (CPC): 16 px give a 3-row grid
            if not gpu and raw.get("optim", {}).get("name") == "adamw":
                # The CPU's multi-tensor AdamW reads its step counters with Tensor.item(), which the
                # CPU proxy counts; on the GPU the fused kernel (siamssl.optim) reads nothing back.
                extra.append("optim.name=sgd")
            try:
                cfg = build(raw, [*shapes_data(batch_size, steps + 1, image_size), *extra, *quiet_trainer(
                    work / "correctness", [f"trainer.device={device}", f"trainer.precision={precision}", "trainer.max_steps=" + str(steps)])])
                trainer = Trainer(cfg)
                losses: list[torch.Tensor] = []
                syncs: list[str] = []
                batches = trainer.loader.batches(0)
                for _ in range(steps):
                    batch = next(batches)
                    with record_host_syncs(device) as found:
                        trainer._train_step(batch, 0)
                    syncs.extend(found)
                    losses.append(trainer._window["loss"].clone())
                batches.close()
                window = torch.stack(losses).cpu()
                per_step = torch.cat([window[:1], window.diff()])  # the window holds running sums
                row.update(
                    steps=steps, finite=bool(torch.isfinite(per_step).all()), first_loss=float(per_step[0]), last_loss=float(per_step[-1]),
                    host_syncs=len(syncs), sync_examples=sorted(set(syncs))[:3],
                    grad_scale=float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None,
                )
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                row["traceback"] = traceback.format_exc(limit=6)
    return {"batch_size": batch_size, "image_size": image_size, "steps": steps, "rows": rows, "methods_without_recipe": missing}


def learning_recipe() -> tuple[str, dict[str, Any]]:
    lightly = REPO / "configs" / "benchmarks" / "lightly_cifar10" / "byol.yaml"
    if lightly.is_file():
        return "benchmarks/lightly_cifar10/byol", yaml.safe_load(lightly.read_text())
    return "byol", recipe("byol")


def stage_learning(device: torch.device, work: Path, cifar: Optional[Path], deadline: float) -> dict[str, Any]:
    gpu = device.type == "cuda"
    name, raw = learning_recipe()
    batch_size = 512 if gpu else 16
    result: dict[str, Any] = {"recipe": name, "batch_size": batch_size, "knn": {"k": 200, "temperature": 0.1}}
    if cifar is None:
        cifar = write_jpeg_folder(work / "toy-cifar", 64, 32, 32)
        result["data"] = "generated toy JPEGs (no --cifar)"
    else:
        result["data"] = "CIFAR-10 JPEG copy"
    if not before(deadline):
        return {**result, "skipped": "budget"}
    common = [
        "data.dataset=imagefolder", f"data.root={cifar}", f"data.batch_size={batch_size}", "data.pipeline=batched",
        f"data.cache_dir={work / 'cache'}", f"data.num_workers={min(8, os.cpu_count() or 1) if gpu else 0}",
        f"trainer.device={device}", "trainer.progress_bar=false", "trainer.overwrite=true",
    ]
    if not gpu:
        common += ["backbone.name=resnet_narrow", "backbone.widths=[8, 16, 16, 32]", "data.augment.crop_size=16", "data.image_size=16",
                   "data.train_subset=32"]
    # A short probe measures the step rate (and decodes the dataset into the cache once).
    probe_steps = 40 if gpu else 2
    started = time.perf_counter()
    try:
        probe = Trainer(build(raw, [*common, f"output_dir={work / 'learning-probe'}", f"trainer.max_steps={probe_steps}",
                                    "eval.monitors=[]", "trainer.log_every_steps=1000000"]))
        result["decode_s"] = round(time.perf_counter() - started, 1)
        batches = probe.loader.batches(0)
        for _ in range(min(5, probe_steps - 1)):
            probe._train_step(next(batches), 0)
        rate, _ = timed_steps(probe, batches, probe_steps - 5 if gpu else 1, deadline)
        batches.close()
        num_train = len(probe.data.train)
        probe = None
    except Exception as error:
        return {**result, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=6)}
    result["probe_images_per_s"] = round(rate, 1)
    # Leave time for the kNN evaluations (random init and final: two passes over train + test).
    eval_reserve = 25.0 if gpu else 5.0
    train_seconds = max(0.0, deadline - time.perf_counter() - eval_reserve)
    epochs = max(1, int(train_seconds * rate * 0.85 / num_train)) if gpu else 1
    result.update(epochs=epochs, planned_train_s=round(epochs * num_train / rate, 1))
    run_dir = work / "learning"
    cfg = build(raw, [*common, f"output_dir={run_dir}", f"trainer.epochs={epochs}", "trainer.max_steps=null",
                      f"eval.every_n_epochs={epochs}", "eval.monitors=[knn]", "eval.knn.k=200", "eval.knn.temperature=0.1",
                      "eval.knn.random_init=true", "eval.knn.max_train_samples=null", "eval.knn.max_test_samples=null",
                      f"trainer.log_every_steps={max(1, num_train // batch_size)}"])
    started = time.perf_counter()
    try:
        summary = Trainer(cfg).fit()
    except Exception as error:
        return {**result, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=6)}
    result.update(
        wall_s=round(time.perf_counter() - started, 1), train_s=summary.get("train_seconds"), images_per_s=summary.get("images_per_s"),
        knn_top1=summary.get("knn_top1"), knn_top1_random_init=summary.get("knn_top1_random_init"),
        seconds_for_200_epochs=round(200 * num_train / summary["images_per_s"], 1) if summary.get("images_per_s") else None,
        lightly_reference={f"bs{b}, {e} epochs": v for (m, b, e), v in LIGHTLY_CIFAR10_KNN.items() if m == "byol"},
    )
    return result


# ------------------------------------------------------------------------------------------ report


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    lines = [
        "# siamssl GPU acceptance", "",
        f"- command: `{command}`",
        f"- date: {machine['date']}; device: {machine.get('gpu', machine['device'])}; torch {machine['torch']}"
        f" (CUDA {machine.get('cuda', '–')}, cuDNN {machine.get('cudnn', '–')}); {machine['cpu_cores']} CPU cores"
        + (f"; nvidia-smi: {machine['nvidia_smi']}" if "nvidia_smi" in machine else ""),
        f"- wall time: {results['wall_s']:.0f} s" + ("; DRY RUN (toy sizes, CPU, no budget)" if results["dry_run"] else f" of a {results['budget_s']:.0f} s budget"),
        "",
    ]
    tp = results.get("throughput")
    if tp:
        lines += [
            f"## Throughput: 2-view {tp['method']} step, {tp['backbone']}, batch {tp['batch_size']}, {tp['image_size']} px",
            "",
            f"images/s over {tp['timed_steps']} steps, data loading included; torchvision = per-sample v2 transforms in "
            f"{tp['torchvision_workers']} DataLoader workers; fp32 rows use TF32 matmuls and convolutions on GPUs "
            "(trainer.tf32, the default); MFU against the dense bf16 peak.",
            "",
            "| precision | channels_last | compile | batched img/s | torchvision img/s | speedup | GFLOP/img | TFLOP/s | MFU | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in tp["cells"]:
            note = c.get("skipped") or c.get("error") or f"warm-up {c.get('warmup_s')} s"
            lines.append(
                f"| {c['precision']} | {c['channels_last']} | {c['compile']} | {_fmt(c.get('batched_images_per_s'))} | "
                f"{_fmt(c.get('torchvision_images_per_s'))} | {_fmt(c.get('speedup'), 2)} | "
                f"{_fmt(c['flops_per_image'] / 1e9 if 'flops_per_image' in c else None, 2)} | {_fmt(c.get('achieved_tflops'), 2)} | "
                f"{_fmt(100 * c['mfu'] if c.get('mfu') is not None else None)}{'%' if c.get('mfu') is not None else ''} | {note} |"
            )
        lines.append("")
    ifo = results.get("imagefolder")
    if ifo:
        bench, check = ifo.get("bench") or {}, ifo.get("check") or {}
        lines += [f"## ImageFolder path (scripts/bench_imagefolder.py)", ""]
        if check:
            lines.append(
                f"Check on {check['device']}: same indices as the CPU path {check['same_indices_as_cpu']}; views vs CPU mean |diff| "
                f"{check['views_vs_cpu_mean_abs']} (decoders differ by ~0.01-0.03), max {check['views_vs_cpu_max_abs']}; repeat max |diff| "
                f"{check['repeat_max_abs']:.3g}; corrupt-file warnings {check['corrupt_warnings']} (expect 1); grouped resize max |diff| "
                f"{check['grouped_resize_max_abs']:.2g} (expect < 1e-4)."
            )
        if bench:
            lines.append(
                f"\nBYOL {bench['backbone']}, {bench['crop_size']} px, {bench['views']} views, batch {bench['batch_size']}, {bench['precision']}, "
                f"{bench['files']} generated JPEGs (mean {bench['mean_file_kb']} KB), {bench['num_workers']} workers: loader alone "
                f"{bench['loader_images_per_s']} images/s; **training step {bench['step_images_per_s']} images/s** over {bench['steps']} steps."
            )
        if "skipped" in ifo or "error" in ifo:
            lines.append(ifo.get("skipped") or ifo["error"])
        lines.append("")
    cor = results.get("correctness")
    if cor:
        lines += [
            f"## Correctness: {cor['steps']} steps of every method's CIFAR recipe, batch {cor['batch_size']}, {cor['image_size']} px", "",
            "| method | recipe | precision | finite | first loss | last loss | host syncs in the step | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in cor["rows"]:
            note = r.get("skipped") or r.get("error") or ", ".join(r.get("sync_examples", []))
            lines.append(
                f"| {r['method']} | {r['recipe']} | {r['precision']} | {r.get('finite', '–')} | {_fmt(r.get('first_loss'), 4)} | "
                f"{_fmt(r.get('last_loss'), 4)} | {_fmt(r.get('host_syncs'))} | {note} |"
            )
        if cor["methods_without_recipe"]:
            lines.append(f"\nMethods without a CIFAR recipe (not run): {', '.join(cor['methods_without_recipe'])}")
        lines.append("")
    lrn = results.get("learning")
    if lrn:
        lines += [f"## Learning: BYOL, recipe `{lrn['recipe']}`, batch {lrn['batch_size']}, {lrn.get('data')}", ""]
        if "knn_top1" in lrn:
            lines += [
                f"{lrn['epochs']} epochs (complete cosine schedule over them) in {_fmt(lrn.get('train_s'))} s of training "
                f"({_fmt(lrn.get('images_per_s'))} images/s; 200 epochs would take {_fmt(lrn.get('seconds_for_200_epochs'))} s): "
                f"**kNN top-1 {_fmt(100 * lrn['knn_top1'] if lrn.get('knn_top1') is not None else None)}%** "
                f"(k=200, T=0.1, full train bank / test split) against "
                f"{_fmt(100 * lrn['knn_top1_random_init'] if lrn.get('knn_top1_random_init') is not None else None)}% at random init.",
                "",
                "lightly's published BYOL kNN (ResNet-18, lossless CIFAR-10, max over epochs): "
                + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in lrn["lightly_reference"].items())
                + "; no published point exists for this run's epoch count.",
            ]
        else:
            lines.append(lrn.get("skipped") or lrn.get("error", "?"))
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", default=None, help="CIFAR-10 image folder (train/<class>/*.jpg) or its .tar.gz")
    parser.add_argument("--out", required=True, help="output folder for gpu_acceptance.json / .md and scratch files")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for all stages (default 480)")
    parser.add_argument("--dry-run", action="store_true", help="every stage at toy size on the CPU (seconds)")
    parser.add_argument("--stages", default="throughput,imagefolder,correctness,learning",
                        help="comma-separated subset of throughput,imagefolder,correctness,learning")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the generated images and runs under OUT/scratch")
    return parser.parse_args(argv)


# Shares of the budget left when each stage starts (the learning stage takes what remains).
SHARES = {"throughput": 0.32, "imagefolder": 0.15, "correctness": 0.45, "learning": 1.0}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(SHARES))
    if unknown:
        print(f"error: unknown stage(s) {unknown}; choose from {sorted(SHARES)}", file=sys.stderr)
        return 2
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        print("error: no CUDA device; use --dry-run to rehearse on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "scratch"
    work.mkdir(exist_ok=True)
    budget = Budget(args.budget_s if not args.dry_run else math.inf)  # a rehearsal runs every cell
    if args.dry_run:
        torch.set_num_threads(1)  # toy tensors: threads only add hand-off cost
    command = "python scripts/gpu_acceptance.py " + " ".join(shlex.quote(a) for a in argv)
    results: dict[str, Any] = {"command": command, "budget_s": args.budget_s, "dry_run": args.dry_run, "machine": stage_machine(device)}
    print(f"machine: {json.dumps(results['machine'])}", flush=True)
    cifar = prepare_cifar(args.cifar, work)
    try:
        for stage in [s for s in SHARES if s in stages]:
            started = time.perf_counter()
            deadline = budget.deadline(SHARES[stage])
            print(f"stage {stage}: {budget.left():.0f} s of budget left, deadline in {deadline - started:.0f} s", flush=True)
            if stage == "throughput":
                results[stage] = stage_throughput(device, work, deadline, args.dry_run)
            elif stage == "imagefolder":
                results[stage] = stage_imagefolder(device, deadline)
            elif stage == "correctness":
                results[stage] = stage_correctness(device, work, deadline)
            else:
                results[stage] = stage_learning(device, work, cifar, deadline)
            results[stage]["stage_s"] = round(time.perf_counter() - started, 1)
            (out / "gpu_acceptance.json").write_text(json.dumps(results, indent=2, default=str) + "\n")  # partial results survive
    finally:
        results["wall_s"] = time.perf_counter() - budget.start
        (out / "gpu_acceptance.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        report = markdown(results, command)
        (out / "gpu_acceptance.md").write_text(report + "\n")
        if not args.keep_scratch:
            shutil.rmtree(work, ignore_errors=True)
        print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
