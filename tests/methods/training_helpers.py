"""Helpers for the method tests: a pool of real augmented views of the built-in dataset, and a
training loop that drives a method exactly as the trainer does (optimizer builder, schedule-free)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from siamssl.backbones import build_backbone
from siamssl.data import build_dataset, view_transforms
from siamssl.data.config import AugmentConfig, DataConfig, ShapesConfig
from siamssl.data.loader import TrainLoader
from siamssl.methods import Batch, SSLMethod, TrainingProgress
from siamssl.config import OptimConfig
from siamssl.optim import build_optimizer

TINY_BACKBONE = dict(cifar_stem=True, widths=(8, 16, 16, 32))


def tiny_backbone(seed: int = 0) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(seed)
    return build_backbone("resnet_narrow", **TINY_BACKBONE)


def view_pool(num_batches: int, batch_size: int = 32, small_crops: int = 0, seed: int = 0) -> list[list[torch.Tensor]]:
    """``num_batches`` batches of views (2 global 16 px crops, then ``small_crops`` 8 px crops) of the
    built-in shapes dataset, through the real augmentation and loader."""
    data = build_dataset(DataConfig(dataset="shapes", shapes=ShapesConfig(num_train=num_batches * batch_size, num_test=8, image_size=16, layout="single")))
    augment = AugmentConfig(crop_size=16, small_crops=small_crops, small_crop_size=8)
    loader = TrainLoader(data.train, view_transforms(augment, data.mean, data.std), batch_size, seed)
    return [batch.views for batch in loader.batches(0)]


def train(
    method: SSLMethod, pool: list[list[torch.Tensor]], steps: int, optim: Optional[dict[str, Any]] = None,
    steps_per_epoch: Optional[int] = None,
) -> list[float]:
    """``steps`` training steps cycling over ``pool``, as ``Trainer._train_step`` orders them; the
    learning rate stays at its peak. Returns the losses."""
    cfg = OptimConfig(**(optim or {}))
    optimizer = build_optimizer(method.parameter_groups(), cfg, cfg.base_lr)
    steps_per_epoch = steps_per_epoch or len(pool)
    losses = []
    method.train()
    for step in range(steps):
        views = pool[step % len(pool)]
        progress = TrainingProgress(step, steps, step // steps_per_epoch, steps_per_epoch)
        outputs = method(Batch(views=list(views), index=torch.arange(views[0].shape[0])), progress)
        optimizer.zero_grad(set_to_none=True)
        outputs["loss"].backward()
        method.on_before_optimizer_step(progress)
        optimizer.step()
        method.on_after_optimizer_step(progress)
        losses.append(float(outputs["loss"].detach()))
    return losses


def shipped_config_raw(path: str, output_dir: str, *extra: str) -> dict[str, Any]:
    """A shipped recipe made CPU-sized for a 2-step run through the real trainer: batch 16 from 32
    images of the built-in dataset at 32 px (small crops 16 px), the tiny ResNet, no workers, only
    the collapse monitor, fp32; ``extra`` overrides shrink the widest heads. Method, optimizer and
    augmentation settings stay the recipe's."""
    from siamssl.config import apply_override, load_raw

    raw = load_raw(path)
    overrides = [
        "trainer.max_steps=2", "data.batch_size=16", "data.dataset=shapes", "data.root=null", "data.num_workers=0",
        "data.in_memory=true", "data.shapes.num_train=32", "data.shapes.num_test=16", "data.shapes.image_size=32", "data.shapes.layout=single",
        "data.augment.crop_size=32", "data.augment.small_crop_size=16", "backbone.name=resnet_narrow",
        "backbone.cifar_stem=true", "backbone.widths=[8, 16, 16, 32]", "trainer.precision=fp32",
        "trainer.progress_bar=false", "eval.monitors=[embedding_std]", f"output_dir={output_dir}", *extra,
    ]
    for override in overrides:
        apply_override(raw, override)
    return raw


def assert_resume_is_exact(tmp_path: Any, method: str, steps: int = 4, stop_after: int = 2) -> None:
    """A run stopped after ``stop_after`` steps and resumed ends with exactly the state (parameters
    and buffers: queues, centres, teachers) of an uninterrupted run."""
    from siamssl.checkpoint import load_checkpoint
    from siamssl.config import config_from_dict
    from siamssl.train.trainer import Interrupted, Trainer
    from tests.conftest import tiny_raw

    def raw(name: str, *extra: str) -> dict[str, Any]:
        return tiny_raw(tmp_path / name, f"trainer.max_steps={steps}", "eval.monitors=[]", *extra, method=method)

    Trainer(config_from_dict(raw("reference"))).fit()
    interrupted = Trainer(config_from_dict(raw("resumed")))
    original_step = interrupted._train_step

    def step_then_stop(batch: Any, epoch: int) -> None:
        original_step(batch, epoch)
        if interrupted.global_step == stop_after:
            interrupted.request_stop()

    interrupted._train_step = step_then_stop  # type: ignore[method-assign]
    try:
        interrupted.fit()
        raise AssertionError("the run was not interrupted")
    except Interrupted:
        pass
    Trainer(config_from_dict(raw("resumed", "trainer.resume=true"))).fit()
    expected = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
