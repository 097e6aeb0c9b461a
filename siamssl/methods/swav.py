"""SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020), as facebookresearch/swav ``main_swav.py``.

Every crop is embedded (backbone → projector → l2-normalize) and scored against unit prototypes.
Sinkhorn-Knopp turns the scores of the assignment crops (the large ones) into codes with equal
partition over the global batch; each other crop predicts those codes (swapped prediction).
Same-resolution crops share one backbone pass. An optional queue of past embeddings enlarges the
batch Sinkhorn partitions when batches are small. Each rank uses its own past embeddings, as the
official per-rank queue; the buffer holds those of every rank (enqueued from the gathered batch),
so it is identical on all ranks, checkpointed whole, and resumes under any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import gather_no_grad, rank, world_size
from siamssl.errors import ConfigError
from siamssl.heads import swav_projector
from siamssl.losses import sinkhorn_knopp, swav_loss
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.multicrop import forward_by_resolution
from siamssl.methods.registry import register_method


@register_method("swav")
class SwAV(SSLMethod):
    @dataclass
    class Config:
        """SwAV options; defaults are the official ImageNet values (800 epochs, batch 4096;
        configs/swav.yaml has the CIFAR recipe).

        hidden_dim / proj_dim: projection head widths (2048 / 128, ``hidden_mlp`` / ``feat_dim``).
        num_prototypes: K (3000). temperature: τ of the swapped prediction (0.1).
        epsilon, sinkhorn_iterations: Sinkhorn's ε (0.05) and iterations (3).
        crops_for_assign: crops whose codes are predicted, the large ones ([0, 1]).
        queue_length: embeddings kept per assignment crop over all ranks (0: no queue; 3840 in the
            batch-256 recipe), rounded down to a multiple of the global batch.
        queue_start_epoch: epoch from which the queue is filled (15); it is used once full.
        freeze_prototypes_steps: the prototypes get no update for this many steps (313, one epoch at
            batch 4096; 5005 at batch 256).
        """

        hidden_dim: int = 2048
        proj_dim: int = 128
        num_prototypes: int = 3000
        temperature: float = 0.1
        epsilon: float = 0.05
        sinkhorn_iterations: int = 3
        crops_for_assign: list[int] = field(default_factory=lambda: [0, 1])
        queue_length: int = 0
        queue_start_epoch: int = 15
        freeze_prototypes_steps: int = 313

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "SwAV.Config", queue_rows: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = swav_projector(feature_dim, cfg.hidden_dim, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        self._normalize_prototypes()
        # Past global batches, newest first; each global batch is the ranks' slices in rank order.
        self.register_buffer("queue", torch.zeros(len(cfg.crops_for_assign), queue_rows, cfg.proj_dim))

    @classmethod
    def from_config(cls, cfg: "SwAV.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "SwAV":
        if len(set(cfg.crops_for_assign)) != len(cfg.crops_for_assign) or not cfg.crops_for_assign:
            raise ConfigError(f"method.crops_for_assign={cfg.crops_for_assign} must list distinct crop indices")
        queue_rows = 0
        if cfg.queue_length > 0:
            usable = cfg.queue_length - cfg.queue_length % context.global_batch_size
            if usable == 0:
                raise ConfigError(
                    f"method.queue_length={cfg.queue_length} is smaller than the global batch {context.global_batch_size}; "
                    "raise it or set it to 0"
                )
            queue_rows = usable
        return cls(backbone, feature_dim, cfg, queue_rows)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        crops = batch.views
        if max(self.cfg.crops_for_assign) >= len(crops):
            raise ConfigError(f"method.crops_for_assign={self.cfg.crops_for_assign} but the batch has {len(crops)} crops")
        n = crops[0].shape[0]
        features = forward_by_resolution(self.backbone, crops)
        z = F.normalize(self.projector(features), dim=1)
        scores = self.prototypes(z).view(len(crops), n, -1)
        codes = self._codes(scores.detach(), z.detach().view(len(crops), n, -1), progress)
        loss = swav_loss(scores, codes, self.cfg.crops_for_assign, self.cfg.temperature)
        return {"loss": loss, "features": features[:n].detach(), "embedding": z[:n].detach()}

    @torch.no_grad()
    def _codes(self, scores: Tensor, embeddings: Tensor, progress: TrainingProgress) -> Tensor:
        """Sinkhorn codes of the assignment crops, the queue's scores prepended once it is full;
        then this batch's embeddings enter the queue (from ``queue_start_epoch`` on)."""
        n, rows = scores.shape[1], self.queue.shape[1]
        global_batch = n * world_size()
        filled_steps = progress.step - self.cfg.queue_start_epoch * progress.steps_per_epoch
        use_queue = rows > 0 and filled_steps * global_batch >= rows  # a step's progress fixes the fill level
        codes = []
        for i, crop in enumerate(self.cfg.crops_for_assign):
            crop_scores = scores[crop]
            if use_queue:
                # this rank's own past embeddings (the official per-rank queue); Sinkhorn's all-reduced
                # normalizers then see every rank's, i.e. the whole queue of one process
                own = self.queue[i].view(rows // global_batch, world_size(), n, -1)[:, rank()].reshape(-1, self.queue.shape[2])
                crop_scores = torch.cat([own @ self.prototypes.weight.t(), crop_scores])
            codes.append(sinkhorn_knopp(crop_scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-n:])
        if rows > 0 and filled_steps >= 0:
            assigned = embeddings[list(self.cfg.crops_for_assign)]  # (A, n, D)
            gathered = gather_no_grad(assigned.transpose(0, 1).contiguous()).transpose(0, 1)  # (A, global batch, D)
            self.queue[:, global_batch:] = self.queue[:, :-global_batch].clone()
            self.queue[:, :global_batch] = gathered
        return torch.stack(codes)

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_before_optimizer_step(self, progress: TrainingProgress) -> None:
        if progress.step < self.cfg.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        # The official code normalizes before each forward; normalizing after each step (and at
        # construction) gives the same weights at every forward and unit prototypes in checkpoints.
        self._normalize_prototypes()
