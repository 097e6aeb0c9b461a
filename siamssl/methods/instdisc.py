"""InstDisc (Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018; official code zhirongw/lemniscate.pytorch).

Every image is its own class. One augmented view goes through the backbone and a linear head to an
l2-normalized 128-d ``v``; the "classifier" is a memory bank holding one such vector per training
image from its last visit. The loss is the non-parametric softmax over the bank (τ = 0.07), exact
(``full_softmax``, lemniscate ``--nce-k 0``) or approximated by NCE with K = 4096 uniform noise
entries and ``Z`` estimated once from the first batch (``nce``, lemniscate ``NCEAverage``); after the
step, the bank entries of the batch move to ``normalize(0.5·old + 0.5·v)``. The proximal term
``λ‖v_i^(t) − v_i^(t−1)‖²`` of the paper (§3.3) is available as ``proximal_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.losses import proximal_penalty
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.memory_bank import BankLoss, MemoryBank, bank_loss, check_bank_options
from siamssl.methods.registry import register_method


@register_method("instdisc")
class InstDisc(SSLMethod):
    # Per-GPU BatchNorm, as the official code (zhirongw/lemniscate.pytorch ``main.py``: DataParallel,
    # or DistributedDataParallel without SyncBN).
    default_sync_bn = False

    @dataclass
    class Config:
        """InstDisc options; defaults are the paper's ImageNet values (configs/instdisc.yaml has CIFAR's).

        embedding_dim: width of the l2-normalized output of the linear head (128).
        loss: "nce" (K noise entries, constant Z), "full_softmax" (the exact softmax over the bank;
            lemniscate's CIFAR setting) or "sampled_softmax" (cross-entropy over the K + 1 candidates,
            HobbitLong/CMC's ``--softmax`` InsDis).
        num_negatives: K, noise entries per anchor (4096); unused by full_softmax.
        temperature: τ (0.07; lemniscate's CIFAR script uses 0.1).
        bank_momentum: m in ``bank_i ← normalize(m·bank_i + (1 − m)·v_i)`` (0.5).
        proximal_weight: λ of the proximal term (§3.3). The official code has none, hence 0; the paper's
            Fig. 3 compares λ = 0, 10, 30, 50 (◐ recalled).
        """

        embedding_dim: int = 128
        loss: BankLoss = "nce"
        num_negatives: int = 4096
        temperature: float = 0.07
        bank_momentum: float = 0.5
        proximal_weight: float = 0.0

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "InstDisc.Config", num_samples: int) -> None:
        super().__init__()
        check_bank_options("instdisc", cfg.loss, cfg.num_negatives, cfg.temperature, cfg.bank_momentum)
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, cfg.embedding_dim)
        self.bank = MemoryBank(num_samples, cfg.embedding_dim, cfg.bank_momentum)
        self._pending: Optional[tuple[Tensor, Tensor]] = None  # (index, v) of the batch awaiting its bank update

    @classmethod
    def from_config(cls, cfg: "InstDisc.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "InstDisc":
        return cls(backbone, feature_dim, cfg, context.num_samples)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        features = self.backbone(batch.views[0])
        v = F.normalize(self.head(features).float(), dim=1)
        candidates = None
        if self.cfg.loss != "full_softmax":
            candidates = self.bank.draw_candidates(batch.index, self.cfg.num_negatives, progress.step)
        loss = bank_loss(self.cfg.loss, v, self.bank, batch.index, candidates, self.cfg.temperature)
        out = {}
        if self.cfg.proximal_weight:
            proximal = proximal_penalty(v, self.bank.features[batch.index])
            loss = loss + self.cfg.proximal_weight * proximal
            out["proximal"] = proximal.detach()
        self._pending = (batch.index, v.detach())
        return {"loss": loss, **out, "features": features.detach(), "embedding": v.detach()}

    @torch.no_grad()
    def project(self, images: Tensor) -> Tensor:
        """The l2-normalized embedding the bank holds (lemniscate's ``net(x)``, its kNN's features)."""
        return F.normalize(self.head(self.backbone(images)).float(), dim=1)

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        if self._pending is not None:
            self.bank.update_(*self._pending)
            self._pending = None
