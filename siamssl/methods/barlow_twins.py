"""Barlow Twins (Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021), as the current facebookresearch/barlowtwins ``main.py``.

Each view goes through backbone and projector separately (per-view BatchNorm statistics); the
loss standardizes the embeddings over the global batch (the code's ``BatchNorm1d(affine=False)``)
and drives their cross-correlation to the identity. Biases and BatchNorm parameters train at their
own rate: ``lr_b = 0.0048 × bs/256`` next to ``lr_w = 0.2 × bs/256`` (commit 046eec3, which replaced
the first release's loss scale), excluded from LARS adaptation and weight decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from siamssl.errors import ConfigError

from siamssl.heads import barlow_twins_projector
from siamssl.losses import barlow_twins_loss
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress, trainable
from siamssl.methods.registry import register_method


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    @dataclass
    class Config:
        """Barlow Twins options; defaults are the official ImageNet values (configs/barlow_twins.yaml
        has the CIFAR recipe).

        proj_dim: width of every projector layer (8192). proj_layers: 3.
        lambd: λ, the weight of the off-diagonal terms (0.0051).
        bias_lr_scale: learning rate of biases and BatchNorm parameters relative to the weights'
            (0.0048 / 0.2 = 0.024, the official ``--learning-rate-biases`` over ``--learning-rate-weights``).
        loss_scale: multiplies the loss (1; the first release's ``--scale-loss``, solo-learn's
            ``scale_loss``). Under LARS it only changes the non-adapted bias/BN updates.
        official_gradient_gpus: None (default): the exact gradient of the global-batch loss, at any
            process count. W: the gradient the official ``main.py`` computes on W GPUs, 1/W of the
            exact one: it sums ``c`` over GPUs with ``torch.distributed.all_reduce``, which carries
            no gradient, so each GPU backpropagates only its own share of ``c``, and DDP then
            averages the W gradients (facebookresearch/barlowtwins #8, lightly #1977). The loss value
            is unchanged. The official rates (bias/BN lr 0.0048, LARS weight decay 1e-6) were tuned
            with this gradient on 16 GPUs; a fixed W reproduces it whatever siamssl's process count.
        """

        proj_dim: int = 8192
        proj_layers: int = 3
        lambd: float = 0.0051
        bias_lr_scale: float = 0.024
        loss_scale: float = 1.0
        official_gradient_gpus: Optional[int] = None

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "BarlowTwins.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = barlow_twins_projector(feature_dim, cfg.proj_dim, cfg.proj_layers)

    @classmethod
    def from_config(cls, cfg: "BarlowTwins.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "BarlowTwins":
        if cfg.official_gradient_gpus is not None and cfg.official_gradient_gpus < 1:
            raise ConfigError(f"method.official_gradient_gpus must be a number of GPUs (>= 1) or null, got {cfg.official_gradient_gpus}")
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        f1, f2 = self.backbone(batch.views[0]), self.backbone(batch.views[1])
        z1, z2 = self.projector(f1), self.projector(f2)
        loss = self.cfg.loss_scale * barlow_twins_loss(z1, z2, self.cfg.lambd)
        if self.cfg.official_gradient_gpus:
            loss = scale_gradient(loss, 1.0 / self.cfg.official_gradient_gpus)
        return {"loss": loss, "features": f1.detach(), "embedding": z1.detach()}

    def parameter_groups(self) -> list[ParamGroup]:
        params = trainable(self.backbone) + trainable(self.projector)
        return [
            ParamGroup("weights", [p for p in params if p.ndim > 1]),
            ParamGroup(
                "biases_and_norms", [p for p in params if p.ndim <= 1],
                lr_scale=self.cfg.bias_lr_scale, weight_decay=0.0, exclude_from_lars=True,
            ),
        ]


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged in value, with its gradient multiplied by ``scale`` in backward."""
    detached = x.detach()
    return detached + scale * (x - detached)
