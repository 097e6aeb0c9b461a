"""Build a run's method from its config: the one place where a config becomes a model, shared by
the trainer, the Lightning adapter and the evaluation tools."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import nn

from siamssl.backbones import build_backbone
from siamssl.config import Config
from siamssl.data.datasets import LabeledImages
from siamssl.methods import MethodContext, SSLMethod, build_method


def build_run_method(cfg: Config, data: LabeledImages, steps_per_epoch: int, total_steps: int) -> SSLMethod:
    """``cfg``'s method with its backbone (on the CPU), as every runner of a config builds it: the
    trainer, :class:`siamssl.integrations.lightning.SSLModule.from_config` and the evaluation tools
    (which rebuild a run's method, in the same order of random draws, to load its checkpoint)."""
    augment = cfg.data.augment

    def make_backbone(**overrides: Any) -> tuple[nn.Module, int]:
        return build_backbone(cfg.backbone.name, **{**asdict(cfg.backbone.options), **overrides})

    backbone, feature_dim = make_backbone()
    context = MethodContext(
        num_samples=len(data.pretraining_split()),
        global_batch_size=cfg.data.batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        image_size=augment.crop_size,
        make_backbone=make_backbone,
        image_mean=tuple(augment.mean or data.mean),
        image_std=tuple(augment.std or data.std),
    )
    return build_method(cfg.method.name, cfg.method.options, backbone, feature_dim, context)
