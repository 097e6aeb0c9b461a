"""VICReg (Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022), as facebookresearch/vicreg ``main_vicreg.py``.

Each view goes through backbone and expander separately; the loss pulls the two expansions
together (invariance) while keeping every dimension's std above 1 (variance) and the dimensions
decorrelated (covariance), the last two over the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from siamssl.heads import vicreg_expander
from siamssl.losses import vicreg_loss
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.registry import register_method


@register_method("vicreg")
class VICReg(SSLMethod):
    @dataclass
    class Config:
        """VICReg options; defaults are the official ImageNet values (configs/vicreg.yaml has the
        CIFAR recipe).

        proj_dim: width of every expander layer (8192). proj_layers: 3.
        sim_coeff: λ, invariance weight (25). std_coeff: μ, variance weight (25).
        cov_coeff: ν, covariance weight (1).
        """

        proj_dim: int = 8192
        proj_layers: int = 3
        sim_coeff: float = 25.0
        std_coeff: float = 25.0
        cov_coeff: float = 1.0

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "VICReg.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = vicreg_expander(feature_dim, cfg.proj_dim, cfg.proj_layers)

    @classmethod
    def from_config(cls, cfg: "VICReg.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "VICReg":
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        f1, f2 = self.backbone(batch.views[0]), self.backbone(batch.views[1])
        z1, z2 = self.projector(f1), self.projector(f2)
        loss = vicreg_loss(z1, z2, self.cfg.sim_coeff, self.cfg.std_coeff, self.cfg.cov_coeff)
        return {"loss": loss, "features": f1.detach(), "embedding": z1.detach()}
