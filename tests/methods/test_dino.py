"""DINO as facebookresearch/dino ``main_dino.py``: centre update, teacher temperature schedule,
EMA teacher without gradient, last layer frozen in epoch 0, per-parameter gradient clipping, the
DINO head, no collapse in a short run, and the shipped recipes through the real trainer."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from siamssl.backbones import BACKBONES, build_backbone
from siamssl.heads import DINOHead
from siamssl.losses import dino_loss
from siamssl.methods import DINO, Batch, MethodContext, TrainingProgress
from siamssl.methods.dino import clip_grad_norm_per_parameter_, teacher_temperature
from siamssl.methods.momentum import cosine_momentum
from siamssl.methods.multicrop import forward_by_resolution
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import assert_resume_is_exact, shipped_config_raw, tiny_backbone, train, view_pool

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONTEXT = MethodContext(num_samples=64, global_batch_size=8, steps_per_epoch=2, total_steps=20, image_size=16)


def _method(**options) -> DINO:
    backbone, dim = tiny_backbone()
    cfg = DINO.Config(**{"out_dim": 40, "hidden_dim": 24, "bottleneck_dim": 8, **options})
    return DINO.from_config(cfg, backbone, dim, CONTEXT)


def _crops(seed: int = 0, small: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(8, 3, 8, 8, generator=g) for _ in range(small)]


def test_teacher_temperature_follows_the_official_linspace_schedule() -> None:
    """np.concatenate((np.linspace(0.04, 0.07, 30), 0.07 …))[epoch]: 0.04 at epoch 0, 0.07 from 29 on."""
    assert teacher_temperature(0, 0.04, 0.07, 30) == 0.04
    assert teacher_temperature(29, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(10, 0.04, 0.07, 30) == pytest.approx(0.04 + 0.03 * 10 / 29)
    assert teacher_temperature(500, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04 and teacher_temperature(1, 0.04, 0.07, 1) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


@pytest.mark.parametrize("epoch", [0, 3])
def test_loss_uses_the_epoch_temperature_and_the_centre_follows_the_ema_rule(epoch: int) -> None:
    """Loss = dino_loss(student, teacher, c_old, τ_s, τ_t(epoch)); afterwards
    c = m·c_old + (1 − m)·mean of the teacher logits over both global crops, exactly."""
    method = _method(warmup_teacher_temp_epochs=6, center_momentum=0.8)
    method.center.normal_()
    center_before = method.center.clone()
    teacher_outputs: list[torch.Tensor] = []
    method.teacher_head.register_forward_hook(lambda module, args, out: teacher_outputs.append(out.detach().clone()))
    crops = _crops()
    out = method(Batch(views=crops, index=torch.arange(8)), TrainingProgress(2 * epoch, 20, epoch, 2))
    (teacher,) = teacher_outputs
    assert teacher.shape == (16, 40)  # the two global crops only
    with torch.no_grad():
        student = method.head(forward_by_resolution(method.backbone, crops))
    temp = teacher_temperature(epoch, 0.04, 0.07, 6)
    expected = dino_loss(student.view(4, 8, 40), teacher.view(2, 8, 40), center_before, 0.1, temp)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.center, 0.8 * center_before + 0.2 * teacher.mean(dim=0, keepdim=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_teacher_has_no_gradient_and_moves_by_the_scheduled_ema(schedule: str) -> None:
    method = _method(teacher_momentum_schedule=schedule)
    assert all(not p.requires_grad for p in list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(method.teacher_backbone.parameters(), method.backbone.parameters()))
    progress = TrainingProgress(5, 20, 2, 2)
    out = method(Batch(views=_crops(), index=torch.arange(8)), progress)
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher_head.parameters())
    with torch.no_grad():  # stands in for the optimizer step
        for p in list(method.backbone.parameters()) + list(method.head.parameters()):
            if p.grad is not None:
                p -= 0.1 * p.grad
    teacher_before = [p.clone() for p in list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters())]
    method.on_after_optimizer_step(progress)
    momentum = cosine_momentum(0.996, 5, 20) if schedule == "cosine" else 0.996
    assert cosine_momentum(0.996, 5, 20) != 0.996
    student = list(method.backbone.parameters()) + list(method.head.parameters())
    teacher = list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters())
    for old, new, theta in zip(teacher_before, teacher, student):
        torch.testing.assert_close(new, momentum * old + (1 - momentum) * theta, rtol=0, atol=2.5e-7)
    assert any(not torch.equal(old, new) for old, new in zip(teacher_before, teacher))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_gets_no_update_in_the_first_epoch(norm_last_layer: bool) -> None:
    method = _method(norm_last_layer=norm_last_layer, freeze_last_layer_epochs=1)
    last = [p.detach().clone() for p in method.head.last_layer.parameters()]
    mlp = [p.detach().clone() for p in method.head.mlp.parameters()]
    pool = [_crops(seed=s) for s in range(2)]
    optim = dict(name="sgd", base_lr=0.1, weight_decay=5e-4)
    train(method, pool, 2, optim, steps_per_epoch=2)  # steps 0 and 1: epoch 0
    assert all(torch.equal(a, b) for a, b in zip(last, method.head.last_layer.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(mlp, method.head.mlp.parameters()))
    train(method, pool, 3, optim, steps_per_epoch=1)  # steps 1, 2 are in epochs 1, 2
    assert not torch.equal(last[0], method.head.last_layer.weight_v)
    assert torch.equal(last[1], method.head.last_layer.weight_g) == norm_last_layer


def test_gradients_are_clipped_parameter_by_parameter() -> None:
    method = _method(clip_grad=0.5, freeze_last_layer_epochs=0)
    out = method(Batch(views=_crops(), index=torch.arange(8)), TrainingProgress(0, 20, 0, 2))
    (100.0 * out["loss"]).backward()
    params = [p for p in list(method.backbone.parameters()) + list(method.head.parameters()) if p.grad is not None]
    before = [p.grad.clone() for p in params]
    method.on_before_optimizer_step(TrainingProgress(0, 20, 0, 2))
    clipped = 0
    for p, grad in zip(params, before):
        norm = grad.norm()
        assert p.grad.norm() <= 0.5 + 1e-5
        if norm > 0.5:
            clipped += 1
            torch.testing.assert_close(p.grad, grad * 0.5 / (norm + 1e-6))
        else:
            assert torch.equal(p.grad, grad)
    assert 0 < clipped < len(params)  # a global clip would have scaled every gradient


def test_per_parameter_clip_differs_from_a_global_clip() -> None:
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_grad_norm_per_parameter_([a, b], 1.0)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))


def test_dino_head_layout_and_weight_normalized_last_layer() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=50, hidden_dim=32, bottleneck_dim=8, num_layers=3, norm_last_layer=True)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert all(m.bias is not None and not m.bias.any() for m in head.mlp if isinstance(m, torch.nn.Linear))
    assert not head.last_layer.weight_g.requires_grad and torch.equal(head.last_layer.weight_g, torch.ones(50, 1))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    x = torch.randn(4, 16)
    bottleneck = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), bottleneck @ head.last_layer.weight.t())
    # With norm_last_layer, every output is a cosine: |logit| ≤ 1.
    assert head(100 * x).abs().max() <= 1 + 1e-5
    with_bn = DINOHead(16, 50, 32, 8, use_bn=True, norm_last_layer=False)
    assert [type(m).__name__ for m in with_bn.mlp][:3] == ["Linear", "BatchNorm1d", "GELU"]
    assert with_bn.last_layer.weight_g.requires_grad


@pytest.mark.parametrize("evaluate", ["teacher", "student"])
def test_embed_uses_the_configured_backbone(evaluate: str) -> None:
    """The teacher by default (DINO's eval_knn.py); the student with ``evaluate: student`` (lightly's
    benchmark kNN)."""
    method = _method(evaluate=evaluate)
    with torch.no_grad():
        for p in method.teacher_backbone.parameters():
            p.mul_(0.5)
    method.eval()
    images = torch.randn(4, 3, 16, 16)
    chosen, other = (method.teacher_backbone, method.backbone) if evaluate == "teacher" else (method.backbone, method.teacher_backbone)
    torch.testing.assert_close(method.embed(images), chosen(images))
    assert not torch.allclose(method.embed(images), other(images))


def test_short_multicrop_run_stays_away_from_log_k() -> None:
    """Collapse shows as the loss sitting at ln K (dino issue #43). 60 steps with 2+2 crops keep it
    well below (≈ 4.2 against ln 256 = 5.55). This tiny ResNet needs the BN head option
    (``use_bn_in_head``): without it the run collapses to exactly ln K here."""
    pool = view_pool(4, 16, small_crops=2)
    backbone, dim = tiny_backbone()
    cfg = DINO.Config(
        out_dim=256, hidden_dim=64, bottleneck_dim=32, use_bn_in_head=True, teacher_temp=0.04, warmup_teacher_temp_epochs=0
    )
    method = DINO(backbone, dim, cfg)
    losses = train(method, pool, 60, dict(name="sgd", base_lr=0.05, weight_decay=5e-4), steps_per_epoch=4)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < math.log(256) - 1.0


def _last_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r][-1]


def test_tiny_config_trains_through_the_trainer(tmp_path: Path) -> None:
    summary = Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.max_steps=2", method="dino"))).fit()
    assert summary["steps"] == 2 and math.isfinite(_last_loss(tmp_path / "run"))


@pytest.mark.parametrize("name,extra", [("dino.yaml", ()), ("dino_imagenet.yaml", ("method.out_dim=4096",))])
def test_shipped_config_trains_two_steps(tmp_path: Path, name: str, extra: tuple[str, ...]) -> None:
    cfg = config_from_dict(shipped_config_raw(str(CONFIGS / name), str(tmp_path / "run"), *extra))
    assert Trainer(cfg).fit()["steps"] == 2
    assert math.isfinite(_last_loss(tmp_path / "run"))


def test_vit_recipe_validates_with_the_vit_backbone_and_trains_on_a_resnet(tmp_path: Path) -> None:
    """dino_vit_imagenet.yaml names ``vit_small`` with ``patch_size: 16`` (siamssl/backbones/vit.py).
    Its method, optimizer (AdamW, weight-decay cosine) and data sections run here on the tiny ResNet."""
    raw = yaml.safe_load((CONFIGS / "dino_vit_imagenet.yaml").read_text())
    assert raw["backbone"] == {"name": "vit_small", "patch_size": 16, "drop_path_rate": 0.1, "init": "dino"}
    if "vit_small" in BACKBONES:
        options = config_from_dict(copy.deepcopy(raw)).backbone.options
        assert (options.patch_size, options.drop_path_rate, options.init) == (16, 0.1, "dino")
    resnet_raw = shipped_config_raw(str(CONFIGS / "dino_vit_imagenet.yaml"), str(tmp_path / "run"), "method.out_dim=4096")
    for vit_only in ("patch_size", "drop_path_rate", "init"):
        del resnet_raw["backbone"][vit_only]
    cfg = config_from_dict(resnet_raw)
    assert cfg.optim.weight_decay_end == 0.4 and cfg.optim.name == "adamw"
    trainer = Trainer(cfg)
    assert trainer.fit()["steps"] == 2 and math.isfinite(_last_loss(tmp_path / "run"))


def test_resume_restores_teacher_and_centre_exactly(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, "dino")


def test_vit_student_takes_the_small_crops_with_interpolated_positions() -> None:
    """DINO with a ViT: the student encodes 16-px global and 8-px local crops (the position
    embedding is resized), and the loss is finite with gradients on the patch projection."""
    torch.manual_seed(0)
    backbone, dim = build_backbone("vit_tiny", image_size=16, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2)
    method = DINO.from_config(DINO.Config(out_dim=40, hidden_dim=24, bottleneck_dim=8), backbone, dim, CONTEXT)
    out = method(Batch(views=_crops(), index=torch.arange(8)), TrainingProgress(0, 20, 0, 2))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and method.backbone.conv_proj.weight.grad.abs().sum() > 0


def test_vit_student_has_stochastic_depth_and_its_teacher_none() -> None:
    """dino_vit_imagenet.yaml's drop_path_rate 0.1 as main_dino.py: the student drops residual
    branches in training, the teacher (the EMA copy, run in eval mode without BatchNorm) never."""
    torch.manual_seed(0)
    backbone, dim = build_backbone("vit_tiny", image_size=8, patch_size=4, hidden_dim=16, num_heads=2, num_layers=3, drop_path_rate=0.5)
    method = DINO(backbone, dim, DINO.Config(out_dim=32, hidden_dim=16, bottleneck_dim=8, clip_grad=None))
    method.train()
    images = torch.randn(16, 3, 8, 8)
    batch = Batch(views=[images, images.flip(3)], index=torch.arange(16))
    method(batch, TrainingProgress(0, 1, 0, 1))
    assert not method.teacher_backbone.training  # the forward put the teacher in eval mode
    teacher_a, teacher_b = method.teacher_backbone(images), method.teacher_backbone(images)
    student_a, student_b = method.backbone(images), method.backbone(images)
    assert torch.equal(teacher_a, teacher_b) and not torch.allclose(student_a, student_b)
    method.backbone.eval()
    torch.testing.assert_close(method.backbone(images), teacher_a)  # same weights before any EMA step
