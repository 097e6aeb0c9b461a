"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021), as
facebookresearch/dino ``main_dino.py``.

A student (backbone + DINO head) matches, on every crop, the centred and sharpened output of a
teacher that sees only the global crops; the teacher is an EMA of the student. Works with any
backbone mapping images to features (ResNets, ViTs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import torch
from torch import Tensor, nn

from siamssl.distributed import all_reduce_sum, world_size
from siamssl.errors import ConfigError
from siamssl.heads import DINOHead
from siamssl.losses import dino_loss
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress, trainable
from siamssl.methods.momentum import cosine_momentum, ema_update_, make_target
from siamssl.methods.multicrop import forward_by_resolution
from siamssl.methods.registry import register_method


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """τ_t at ``epoch``: ``linspace(warmup_temp, temp, warmup_epochs)`` over the first epochs, then
    ``temp`` (DINOLoss's ``teacher_temp_schedule``; note linspace reaches ``temp`` at epoch W − 1)."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


@torch.no_grad()
def clip_grad_norm_per_parameter_(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale each gradient by ``min(1, max_norm / (‖g‖ + 1e-6))`` on its own (DINO's
    ``utils.clip_gradients``), unlike ``clip_grad_norm_``, which uses the norm of all of them."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        norms = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms])


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@register_method("dino")
class DINO(SSLMethod):
    @dataclass
    class Config:
        """DINO options; defaults are the paper's (teacher temperature 0.04 → 0.07 over 30 epochs;
        the code's default is 0.04 throughout). configs/dino*.yaml hold the recipes.

        out_dim: prototypes K of the last layer (65536). hidden_dim / bottleneck_dim: 2048 / 256.
        head_layers: MLP layers of the head (3). use_bn_in_head: BatchNorm in the head MLP (False).
        norm_last_layer: keep the last layer's weight-norm scale at 1 (True).
        global_crops: the first crops, seen by the teacher (2).
        student_temp: τ_s (0.1). teacher_temp: τ_t after warm-up (0.07).
        warmup_teacher_temp, warmup_teacher_temp_epochs: τ_t rises linearly from 0.04 over 30 epochs.
        center_momentum: m of the centre c ← m·c + (1 − m)·mean teacher output (0.9).
        teacher_momentum: base EMA rate of the teacher, cosine to 1 (0.996).
        teacher_momentum_schedule: ``cosine`` (to 1 over training, main_dino.py) or ``constant``
            (lightly's CIFAR-10 benchmark: 0.99 throughout).
        clip_grad: clip each student gradient to this norm on its own (3.0; null or 0 disables).
        freeze_last_layer_epochs: the last layer gets no update for this many epochs (1).
        evaluate: the backbone ``embed`` returns for evaluation: ``teacher`` (DINO's ``eval_knn.py
            --checkpoint_key teacher``) or ``student`` (lightly's benchmark kNN).
        """

        out_dim: int = 65536
        hidden_dim: int = 2048
        bottleneck_dim: int = 256
        head_layers: int = 3
        use_bn_in_head: bool = False
        norm_last_layer: bool = True
        global_crops: int = 2
        student_temp: float = 0.1
        teacher_temp: float = 0.07
        warmup_teacher_temp: float = 0.04
        warmup_teacher_temp_epochs: int = 30
        center_momentum: float = 0.9
        teacher_momentum: float = 0.996
        teacher_momentum_schedule: Literal["cosine", "constant"] = "cosine"
        clip_grad: Optional[float] = 3.0
        freeze_last_layer_epochs: int = 1
        evaluate: Literal["teacher", "student"] = "teacher"

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "DINO.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = DINOHead(
            feature_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers, cfg.use_bn_in_head, cfg.norm_last_layer
        )
        self.teacher_backbone = make_target(backbone)
        self.teacher_head = make_target(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        # The official teacher keeps batch statistics when it has BatchNorm (train mode); without BN,
        # eval mode is the same computation and turns off stochastic depth, which its teacher lacks.
        self._teacher_uses_batch_stats = _has_batch_norm(backbone) or _has_batch_norm(self.head)

    @classmethod
    def from_config(cls, cfg: "DINO.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "DINO":
        if cfg.global_crops < 1:
            raise ConfigError(f"method.global_crops must be at least 1, got {cfg.global_crops}")
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        crops, num_global = batch.views, self.cfg.global_crops
        if len(crops) < max(2, num_global):
            raise ConfigError(f"DINO needs {max(2, num_global)} crops or more ({num_global} global), the batch has {len(crops)}")
        n = crops[0].shape[0]
        teacher_mode = self.training and self._teacher_uses_batch_stats
        self.teacher_backbone.train(teacher_mode)
        self.teacher_head.train(teacher_mode)
        with torch.no_grad():
            teacher_logits = self.teacher_head(forward_by_resolution(self.teacher_backbone, crops[:num_global]))
        features = forward_by_resolution(self.backbone, crops)
        student_logits = self.head(features)
        temp = teacher_temperature(
            progress.epoch, self.cfg.warmup_teacher_temp, self.cfg.teacher_temp, self.cfg.warmup_teacher_temp_epochs
        )
        loss = dino_loss(
            student_logits.view(len(crops), n, -1), teacher_logits.view(num_global, n, -1), self.center, self.cfg.student_temp, temp
        )
        self._update_center(teacher_logits)
        return {"loss": loss, "features": features[:n].detach(), "embedding": student_logits[:n].detach()}

    @torch.no_grad()
    def _update_center(self, teacher_logits: Tensor) -> None:
        """c ← m·c + (1 − m)·(mean of the teacher logits over the global crops of all ranks)."""
        total = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_center = total / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1.0 - self.cfg.center_momentum)

    def parameter_groups(self) -> list[ParamGroup]:
        return [ParamGroup("student", trainable(self.backbone) + trainable(self.head))]

    def on_before_optimizer_step(self, progress: TrainingProgress) -> None:
        if self.cfg.clip_grad:
            clip_grad_norm_per_parameter_(trainable(self.backbone) + trainable(self.head), self.cfg.clip_grad)
        if progress.epoch < self.cfg.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        momentum = self.cfg.teacher_momentum
        if self.cfg.teacher_momentum_schedule == "cosine":
            momentum = cosine_momentum(momentum, progress.step, progress.total_steps)
        ema_update_(self.teacher_backbone, self.backbone, momentum)
        ema_update_(self.teacher_head, self.head, momentum)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """The teacher backbone's features, which DINO evaluates (``--checkpoint_key teacher``), or
        the student's (``evaluate: student``)."""
        return (self.backbone if self.cfg.evaluate == "student" else self.teacher_backbone)(images)
