"""Every recipe shipped for BYOL, MoCo v1/v2/v3 and SimCLR, and every lightly-protocol benchmark
config (configs/benchmarks/lightly_cifar10), trains through the real trainer.

Tiny variants (tests/tiny_configs) run 2 steps with the kNN monitor; the shipped configs/*.yaml run
2 steps of batch 16 on the built-in shapes dataset with tiny crops (ViTs: 2 blocks), so the heads,
queues, schedules and optimizer settings of each recipe are exercised as written. The other methods'
recipes run the same way in their own test files (test_barlow_twins, test_vicreg, test_swav,
test_dino, test_instdisc)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from siamssl.config import config_from_dict, load_config
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import assert_resume_is_exact, shipped_config_raw

REPO = Path(__file__).resolve().parents[2]
METHODS = ["byol", "moco", "mocov3", "simclr"]
RECIPES = [
    "byol", "byol_imagenet", "mocov1", "mocov1_imagenet", "mocov2", "mocov2_imagenet",
    "mocov3", "mocov3_imagenet", "mocov3_vit", "mocov3_vit_imagenet", "simclr", "simclr_imagenet",
]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("method", METHODS)
def test_tiny_variant_trains_through_the_trainer(tmp_path, method):
    summary = Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.max_steps=2", method=method))).fit()
    losses = _losses(tmp_path / "run")
    assert summary["steps"] == 2 and losses and all(math.isfinite(v) for v in losses)
    assert 0.0 <= summary["knn_top1"] <= 1.0 and summary["z_std"] > 0


def test_mocov3_with_a_frozen_vit_patch_embedding_trains(tmp_path):
    raw = tiny_raw(tmp_path / "run", "trainer.max_steps=2", "eval.monitors=[embedding_std]", method="mocov3")
    raw["backbone"] = {"name": "vit_tiny", "image_size": 16, "patch_size": 4, "hidden_dim": 32, "num_heads": 2,
                       "num_layers": 2, "pos_embedding": "sincos", "init": "mocov3", "freeze_patch_embedding": True}
    trainer = Trainer(config_from_dict(raw))
    before = [p.clone() for p in trainer.method.backbone.conv_proj.parameters()]
    trainer.fit()
    after = list(trainer.method.backbone.conv_proj.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(math.isfinite(v) for v in _losses(tmp_path / "run"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_trains_two_steps(tmp_path, recipe):
    size = 8
    overrides = [
        "trainer.max_steps=2", "data.batch_size=16", "data.dataset=shapes", "data.root=null", "data.in_memory=true",
        "data.shapes.num_train=32", "data.shapes.num_test=16", f"data.shapes.image_size={size}",
        f"data.augment.crop_size={size}", "data.num_workers=0", "eval.monitors=[embedding_std]",
        "trainer.progress_bar=false", "trainer.precision=fp32", f"output_dir={tmp_path / 'run'}",
    ]
    if recipe.startswith(("mocov1", "mocov2")):
        # 8 BatchNorm groups of a 16-image batch hold 2 images each: their statistics (and the
        # gradients through them) explode within a step. The recipes' groups hold 32 or 64 images.
        overrides.append("method.bn_splits=2")
    if "vit" in recipe:
        overrides += [f"backbone.image_size={size}", "backbone.patch_size=4", "backbone.num_layers=2"]
    cfg = load_config(str(REPO / "configs" / f"{recipe}.yaml"), overrides)
    summary = Trainer(cfg).fit()
    losses = _losses(tmp_path / "run")
    assert summary["steps"] == 2 and losses and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("method", ["byol", "moco", "mocov3"])
def test_resume_is_exact(tmp_path, method):
    """Momentum encoders, the MoCo queue and pointer, and the Shuffle-BN permutations (seeded by the
    step) continue exactly after an interruption."""
    assert_resume_is_exact(tmp_path, method)


LIGHTLY = sorted((REPO / "configs" / "benchmarks" / "lightly_cifar10").glob("*.yaml"))


@pytest.mark.parametrize("path", LIGHTLY, ids=[p.stem for p in LIGHTLY])
def test_lightly_protocol_config_trains_two_steps(tmp_path, path):
    """Each lightly-protocol config as written (optimizer, schedule, heads, momentum, transforms) on
    the tiny ResNet, with its kNN monitor (k lowered to the 32-image bank)."""
    extra = ["eval.monitors=[knn]", "eval.knn.k=5"]
    if path.stem == "moco":
        extra.append("method.bn_splits=2")  # 8 BatchNorm groups of a 16-image batch hold 2 images
    cfg = config_from_dict(shipped_config_raw(str(path), str(tmp_path / "run"), *extra))
    assert cfg.trainer.epochs == 200 and cfg.data.batch_size == 16 and cfg.eval.every_n_epochs == 1
    summary = Trainer(cfg).fit()
    losses = _losses(tmp_path / "run")
    assert summary["steps"] == 2 and losses and all(math.isfinite(v) for v in losses)
    assert 0.0 <= summary["knn_top1"] <= 1.0


@pytest.mark.parametrize("recipe, extra", [("mocov1", ["method.bn_splits=2"]), ("mocov2", ["method.bn_splits=2"]), ("instdisc", [])])
def test_recipes_monitor_knn_on_the_128d_output_as_their_sources(tmp_path, recipe, extra):
    """The MoCo CIFAR demo votes with the 128-d output of encoder_q, lemniscate's kNN with the
    l2-normalized 128-d embedding: the recipes' kNN monitor uses method.project, the head's output."""
    raw = shipped_config_raw(str(REPO / "configs" / f"{recipe}.yaml"), str(tmp_path / "run"), *extra,
                             "eval.monitors=[knn]", "eval.knn.k=5")
    cfg = config_from_dict(raw)
    assert cfg.monitor_options["knn"].features == "projector"
    trainer = Trainer(cfg)
    trainer.method.eval()
    projected = trainer.method.project(torch.rand(2, 3, 32, 32))
    assert projected.shape == (2, 128)
    if recipe == "instdisc":
        torch.testing.assert_close(projected.norm(dim=1), torch.ones(2))
    summary = trainer.fit()
    assert summary["steps"] == 2 and 0.0 <= summary["knn_top1"] <= 1.0
