"""InvaSpread (Ye, Zhang, Yuen, Chang, "Unsupervised Embedding Learning via Invariant and Spreading
Instance Feature", CVPR 2019; official code mangye16/Unsupervised_Embedding_Learning @ 29de398).

Instance discrimination within the batch, with no memory bank: one encoder (backbone + a linear
layer to a 128-d l2-normalized embedding, ``models/resnet_cifar.py``) embeds both augmented views,
concatenated into one batch as ``demo_seen.py`` does (``torch.cat((inputs1, inputs2), 0)``, one
BatchNorm batch), and :func:`siamssl.losses.invariant_spreading_loss` makes each view recognise
its other view as its instance and every other embedding of the batch as not it (τ = 0.1, the
candidates detached as in ``BatchAverage.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.losses import invariant_spreading_loss
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.registry import register_method


@register_method("invaspread")
class InvaSpread(SSLMethod):
    # The official code trains with DataParallel (per-GPU BatchNorm over its chunk of the batch).
    default_sync_bn = False

    @dataclass
    class Config:
        """InvaSpread options; defaults are the official CIFAR command's values
        (``python demo_seen.py --dataset cifar --batch-t 0.1 --lr 0.03 --low-dim 128 --batch-size 128``).

        embedding_dim: width of the l2-normalized linear embedding (``--low-dim`` 128).
        temperature: τ (``--batch-t`` 0.1; the README gives 0.05-0.1).
        negative_weight: m, the weight of the negatives (``--batch-m`` 1).
        stop_gradient_candidates: detach the candidate side of the inner products, as the code does.
        """

        embedding_dim: int = 128
        temperature: float = 0.1
        negative_weight: float = 1.0
        stop_gradient_candidates: bool = True

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "InvaSpread.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = nn.Linear(feature_dim, cfg.embedding_dim)

    @classmethod
    def from_config(cls, cfg: "InvaSpread.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "InvaSpread":
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        features = self.backbone(torch.cat([x1, x2]))
        f1, f2 = F.normalize(self.projector(features).float(), dim=1).chunk(2)
        loss = invariant_spreading_loss(
            f1, f2, self.cfg.temperature, self.cfg.negative_weight, self.cfg.stop_gradient_candidates
        )
        return {"loss": loss, "features": features[: x1.shape[0]].detach(), "embedding": f1.detach()}
