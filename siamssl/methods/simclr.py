"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020; SimCLR v2, NeurIPS 2020), as in google-research/simclr.

One encoder (backbone + projector), NT-Xent over the 2N views with the other views of the global
batch as negatives. Two details of the official code:

* **Loss scale.** ``add_contrastive_loss`` returns mean_i(loss_a_i + loss_b_i): the two directions
  are *summed*, which is 2 × :func:`siamssl.losses.nt_xent` (the mean over the 2N anchors). The
  method returns ``2 · nt_xent`` so that the official learning rates (LARS, 0.3 × bs/256 on
  ImageNet, 1.0 × bs/256 on CIFAR) transfer unchanged.
* **One batch for both views.** The views are concatenated and go through the network together
  (``tf.concat(features_list, 0)`` in ``tf2/model.py``), so BatchNorm statistics cover both views.

Projector: Linear(no bias) + BN + ReLU blocks of the backbone's width, then Linear(128, no bias) +
BN with γ and no β (``center=False``) — 2 layers in v1, 3 in v2 (the code's default since v2);
Dense kernels are initialized N(0, 0.01) as in ``LinearLayer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from siamssl.heads import simclr_projector
from siamssl.losses import nt_xent
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.registry import register_method


@register_method("simclr")
class SimCLR(SSLMethod):
    @dataclass
    class Config:
        """SimCLR options; defaults are the official code's ImageNet values.

        proj_layers: 3 (SimCLR v2 head, the code's default) or 2 (SimCLR v1 head).
        proj_hidden_dim: hidden width (None: the backbone's feature dimension, as in the code).
        proj_dim: output dimension (128).
        temperature: τ (0.1 for ImageNet at batch 4096; 0.5 in the CIFAR recipe).
        """

        proj_layers: int = 3
        proj_hidden_dim: Optional[int] = None
        proj_dim: int = 128
        temperature: float = 0.1

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "SimCLR.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = simclr_projector(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)
        for module in self.projector.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)

    @classmethod
    def from_config(cls, cfg: "SimCLR.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "SimCLR":
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        features = self.backbone(torch.cat([x1, x2]))
        z1, z2 = self.projector(features).chunk(2)
        loss = 2.0 * nt_xent(z1, z2, self.cfg.temperature)
        return {"loss": loss, "features": features[: x1.shape[0]].detach(), "embedding": z1.detach()}
