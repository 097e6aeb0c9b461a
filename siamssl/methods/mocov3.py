"""MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021), as in facebookresearch/moco-v3 ``moco/builder.py``.

Query encoder = backbone + projector + predictor; momentum encoder = backbone + projector (no
predictor), updated by EMA with a cosine schedule of m (``--moco-m-cos``, used by every official
config). The loss is symmetric InfoNCE against the other view's keys of the whole (gathered) batch,
each term scaled by 2T:

    L = 2T · [ctr(q1, k2) + ctr(q2, k1)],   ctr(q, k) = CE(q̂ k̂ᵀ / T, labels = arange(N) + N·rank)

The 2T factor is the official code's (keeps the gradient scale independent of T; moco-v3 issue #31);
keep it or the learning rates do not transfer. Each view goes through the encoders separately.

The official code updates the momentum encoder at the start of ``forward`` with m of the current
iteration; here the same update runs after optimizer step k with m_{k+1}, which is the same sequence
of weights. ResNet: 2-layer projector, no BN on the predictor output, T = 1.0. ViT: 3-layer projector,
BN(affine=False) on the predictor output, T = 0.2 (configs/mocov3_vit*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from siamssl.heads import moco_v3_predictor, moco_v3_projector
from siamssl.losses import info_nce
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.momentum import cosine_momentum, ema_update_, make_target
from siamssl.methods.registry import register_method


@register_method("mocov3")
class MoCoV3(SSLMethod):
    @dataclass
    class Config:
        """MoCo v3 options; defaults are the ResNet-50 values of the official code.

        proj_hidden_dim / proj_dim / proj_layers: projector Linear(no bias)+BN+ReLU × (layers − 1) →
            Linear(no bias) + BN(affine=False): 4096 / 256 / 2 (ViT: 3).
        pred_hidden_dim: predictor hidden width (4096). predictor_output_bn: BN(affine=False) on the
            predictor output (False for ResNet, True for ViT).
        temperature: T (1.0 for ResNet, 0.2 for ViT).
        momentum: m at step 0 (0.99 for 100/300 epochs, 0.996 for 1000).
        momentum_schedule: ``cosine`` from m to 1 (``--moco-m-cos``) or ``constant`` (the code's default flag).
        """

        proj_hidden_dim: int = 4096
        proj_dim: int = 256
        proj_layers: int = 2
        pred_hidden_dim: int = 4096
        predictor_output_bn: bool = False
        temperature: float = 1.0
        momentum: float = 0.99
        momentum_schedule: Literal["cosine", "constant"] = "cosine"

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "MoCoV3.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = moco_v3_projector(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)
        self.predictor = moco_v3_predictor(cfg.proj_dim, cfg.pred_hidden_dim, cfg.predictor_output_bn)
        self.momentum_backbone = make_target(backbone)
        self.momentum_projector = make_target(self.projector)

    @classmethod
    def from_config(cls, cfg: "MoCoV3.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "MoCoV3":
        return cls(backbone, feature_dim, cfg)

    def contrastive(self, q: Tensor, k: Tensor) -> Tensor:
        """``2T · ctr(q, k)``, keys gathered over ranks (``info_nce`` without a bank)."""
        return 2.0 * self.cfg.temperature * info_nce(q, k, temperature=self.cfg.temperature)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1 = self.projector(f1)
        q1, q2 = self.predictor(z1), self.predictor(self.projector(f2))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        loss = self.contrastive(q1, k2) + self.contrastive(q2, k1)
        return {"loss": loss, "features": f1.detach(), "embedding": z1.detach()}

    def momentum_at(self, step: int, total_steps: int) -> float:
        """m used after optimizer step ``step``: the official m of iteration ``step + 1``."""
        if self.cfg.momentum_schedule == "constant":
            return self.cfg.momentum
        return cosine_momentum(self.cfg.momentum, step + 1, total_steps)

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        m = self.momentum_at(progress.step, progress.total_steps)
        ema_update_(self.momentum_backbone, self.backbone, m)
        ema_update_(self.momentum_projector, self.projector, m)
