"""UniGrad (Tao et al., "Exploring the Equivalence of Siamese Self-Supervised Learning via A Unified
Gradient Framework", CVPR 2022; official code fundamentalvision/UniGrad).

No predictor, no negatives bank: the online projection u1 receives the gradient −u2m + λ F u1, where
u2m is the other view through the momentum encoder and F a moving average of the correlation of the
momentum projections (all-reduced over ranks, a buffer: checkpointed, resumed exactly). The
gradient is injected through the surrogate ⟨sg(g), u⟩ (:func:`siamssl.losses.unigrad_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from siamssl.distributed import all_reduce_mean
from siamssl.heads import build_mlp
from siamssl.losses import unigrad_correlation, unigrad_loss
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.momentum import cosine_momentum, ema_update_, make_target
from siamssl.methods.registry import register_method


@register_method("unigrad")
class UniGrad(SSLMethod):
    @dataclass
    class Config:
        """UniGrad options; defaults are the official ImageNet values (``configs/unigrad.py``).

        proj_hidden_dim, proj_dim, proj_layers: the projector, [Linear(no bias) + BN + ReLU] ×
            (layers − 1) then Linear with bias, no output BN (2048, 2048, 3).
        lambd: λ, weight of the negative term λ F u (100, for d = 2048; F's eigenvalues scale as 1/d,
            so smaller projectors need a proportionally smaller λ, e.g. about 3 for d = 64).
        rho: ρ of F ← ρF + (1 − ρ)F_batch (0.99); F starts at the first batch's value.
        base_momentum: EMA momentum of the momentum encoder at step 0, rising to 1 on a cosine (0.996).
        """

        proj_hidden_dim: int = 2048
        proj_dim: int = 2048
        proj_layers: int = 3
        lambd: float = 100.0
        rho: float = 0.99
        base_momentum: float = 0.996

    correlation: Tensor
    correlation_initialized: Tensor

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "UniGrad.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = build_mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)
        self.target_backbone, self.target_projector = make_target(backbone), make_target(self.projector)
        self.register_buffer("correlation", torch.zeros(cfg.proj_dim, cfg.proj_dim))
        self.register_buffer("correlation_initialized", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg: "UniGrad.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "UniGrad":
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        f1 = self.backbone(x1)
        z1, z2 = self.projector(f1), self.projector(self.backbone(x2))
        with torch.no_grad():
            z1m = self.target_projector(self.target_backbone(x1))
            z2m = self.target_projector(self.target_backbone(x2))
            if self.training:
                self._update_correlation(all_reduce_mean(unigrad_correlation(z1m, z2m)))
        loss = unigrad_loss(z1, z2, z1m, z2m, self.correlation, self.cfg.lambd)
        with torch.no_grad():
            positive_similarity = 0.5 * (nn.functional.cosine_similarity(z1, z2m).mean() + nn.functional.cosine_similarity(z2, z1m).mean())
        return {"loss": loss, "positive_similarity": positive_similarity, "features": f1.detach(), "embedding": z1.detach()}

    def _update_correlation(self, batch_correlation: Tensor) -> None:
        # F is updated before it is used, and starts at the first batch's value (official code).
        averaged = torch.lerp(self.correlation, batch_correlation, 1.0 - self.cfg.rho)
        self.correlation.copy_(torch.where(self.correlation_initialized, averaged, batch_correlation))
        self.correlation_initialized.fill_(True)

    @torch.no_grad()
    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        # The momentum for the update after step k is τ_{k+1}; the official code applies τ_k before
        # the forward pass of step k, the same sequence of updates.
        momentum = cosine_momentum(self.cfg.base_momentum, progress.step + 1, progress.total_steps)
        ema_update_(self.target_backbone, self.backbone, momentum)
        ema_update_(self.target_projector, self.projector, momentum)
