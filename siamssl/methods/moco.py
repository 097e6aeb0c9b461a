"""MoCo v1 / v2 (He et al., CVPR 2020; Chen et al., arXiv:2003.04297), as in facebookresearch/moco
and its CIFAR-10 demo (branch ``colab-notebook``).

A query encoder (backbone + head) is trained with InfoNCE against the key of the other view, made
by a momentum key encoder, and a FIFO queue of past keys as negatives:

    L = CE([q·k, q·queueᵀ]/T, label 0)                      (asymmetric, the papers)
    L = L(q1, k2) + L(q2, k1), both keys enqueued        (``symmetric``, the CIFAR demo)

v1: linear head, T = 0.07. v2: MLP head without BatchNorm, T = 0.2 (plus blur and a cosine rate).

**When the queue is updated.** The official code enqueues at the end of ``forward``, after the loss,
and needs ``queue.clone()`` so that the in-place update does not touch the tensor saved for
backward. Here the keys are kept until ``on_after_optimizer_step`` and enqueued there (after the
key encoder's momentum update): the keys used as negatives at step k are exactly those of steps
< k, as in the official code, and by construction no loss term — in particular the second term of
the symmetric loss — can see keys of its own step (the bug of lightly's symmetric MoCo).

**Shuffle-BN across ranks and within a rank.** MoCo was trained on 8 GPUs without SyncBN: each
BatchNorm saw 1/8 of the batch, and the keys' groups were shuffled so that a query and its key
never share BatchNorm statistics (the statistics would otherwise leak a "signature" of the batch,
K. He in moco issue #46). The demo emulates the 8 GPUs on one with ``SplitBatchNorm(8)``. Both are
one mechanism here: ``bn_splits`` is the number of BatchNorm groups of the **global** batch, for
both encoders. With W processes, every BatchNorm of a rank uses ``SplitBatchNorm(bn_splits / W)``
(W = 8, bn_splits = 8 is the official multi-GPU code; W = 1 is the demo). For the keys, the images of
all ranks are gathered, one permutation of the global batch is drawn (the same on every rank: its
seed is rank 0's, agreed once), each rank encodes its slice of the shuffled batch, and the keys are
gathered and unshuffled (``_batch_shuffle_ddp``). So a run with W processes × B images computes the
same keys, losses and queue as one process with W·B images. The trainer's ``sync_bn`` does not
apply to split BatchNorm layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.backbones.split_bn import convert_split_batchnorm
from siamssl.distributed import (
    average_split_batchnorm_statistics_,
    broadcast_from_first_rank,
    gather_no_grad,
    host_to_device,
    local_row_offset,
    world_size,
)
from siamssl.errors import ConfigError
from siamssl.heads import moco_v2_head
from siamssl.losses import info_nce
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.momentum import cosine_momentum, ema_update_, make_target
from siamssl.methods.registry import register_method


@register_method("moco")
class MoCo(SSLMethod):
    @dataclass
    class Config:
        """MoCo options; defaults are MoCo v2's ImageNet values (v1: ``head: linear``, ``temperature: 0.07``).

        head: ``mlp`` (v2: Linear + ReLU + Linear, biases, no BN) or ``linear`` (v1: the ResNet's fc).
        proj_dim: the key/query dimension (128). head_hidden_dim: the MLP's hidden width (None: the
            backbone's feature dimension, 2048 for ResNet-50, as in the official ``--mlp``).
        temperature: T (0.2 for v2, 0.07 for v1, 0.1 in the CIFAR demo).
        queue_size: K, the number of queued negatives (65536; 4096 in the CIFAR demo). It must be a
            multiple of the keys enqueued per step (the global batch, twice that when symmetric).
        momentum: m of the key encoder's EMA (0.999; 0.99 in the CIFAR demo).
        momentum_schedule: ``constant`` (MoCo v1/v2) or ``cosine`` from m to 1 (MoCo v2+ style).
        symmetric: add the swapped loss L(q2, k1) and enqueue both keys (the CIFAR demo's option).
        shuffle_bn: encode keys in shuffled BatchNorm groups (Shuffle-BN); False disables it (the demo
            reports -4% at 800 epochs).
        bn_splits: BatchNorm groups per global batch, for both encoders (8 = the official 8 GPUs and
            the demo's ``--bn-splits 8``); must be a multiple of the number of processes.
        """

        head: Literal["mlp", "linear"] = "mlp"
        proj_dim: int = 128
        head_hidden_dim: Optional[int] = None
        temperature: float = 0.2
        queue_size: int = 65536
        momentum: float = 0.999
        momentum_schedule: Literal["constant", "cosine"] = "constant"
        symmetric: bool = False
        shuffle_bn: bool = True
        bn_splits: int = 8

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "MoCo.Config", global_batch_size: int, num_processes: int = 1) -> None:
        super().__init__()
        keys_per_step = global_batch_size * (2 if cfg.symmetric else 1)
        if cfg.queue_size < keys_per_step or cfg.queue_size % keys_per_step:
            raise ConfigError(
                f"method.queue_size={cfg.queue_size} must be a multiple of the {keys_per_step} keys enqueued per step "
                f"(data.batch_size={global_batch_size}{' × 2, symmetric' if cfg.symmetric else ''}); "
                f"e.g. method.queue_size={max(1, round(cfg.queue_size / keys_per_step)) * keys_per_step}"
            )
        if cfg.bn_splits < 1 or cfg.bn_splits % num_processes or global_batch_size % cfg.bn_splits:
            raise ConfigError(
                f"method.bn_splits={cfg.bn_splits} must be a multiple of the {num_processes} process(es) "
                f"and divide data.batch_size={global_batch_size}"
            )
        self.cfg = cfg
        self.backbone = convert_split_batchnorm(backbone, cfg.bn_splits // num_processes)
        self.feature_dim = feature_dim
        if cfg.head == "linear":
            self.projector: nn.Module = nn.Linear(feature_dim, cfg.proj_dim)
        else:
            self.projector = moco_v2_head(feature_dim, cfg.head_hidden_dim or feature_dim, cfg.proj_dim)
        self.key_backbone = make_target(self.backbone)
        self.key_projector = make_target(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._initial_seed = torch.initial_seed() % (1 << 62)
        self._pending_keys: Optional[Tensor] = None

    @classmethod
    def from_config(cls, cfg: "MoCo.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "MoCo":
        return cls(backbone, feature_dim, cfg, context.global_batch_size, world_size())

    def query(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(backbone features, query embedding) of the query encoder."""
        features = self.backbone(images)
        return features, self.projector(features)

    def shuffle_permutation(self, global_size: int, step: int, view: int, device: torch.device) -> Tensor:
        """The Shuffle-BN permutation of the global batch for ``view`` at ``step``: deterministic (exact
        resume), identical on every rank (rank 0's, broadcast on the device as the official
        ``_batch_shuffle_ddp`` does). Drawn on the host from a seed and copied without blocking, so the
        step never waits for the device."""
        generator = torch.Generator().manual_seed((self._initial_seed * 1_000_003 + 2 * step + view) % (1 << 63))
        permutation = host_to_device(torch.randperm(global_size, generator=generator), device)
        return broadcast_from_first_rank(permutation)

    @torch.no_grad()
    def keys(self, images: Tensor, step: int, view: int) -> tuple[Tensor, Tensor]:
        """l2-normalized keys of this rank's ``images`` and of the whole global batch (rank order)."""
        if not self.cfg.shuffle_bn:
            local = F.normalize(self.key_projector(self.key_backbone(images)), dim=1)
            return local, gather_no_grad(local)
        n, offset = images.shape[0], local_row_offset(images.shape[0])
        everyone = gather_no_grad(images)
        permutation = self.shuffle_permutation(everyone.shape[0], step, view, images.device)
        shuffled = self.key_projector(self.key_backbone(everyone[permutation[offset : offset + n]]))
        gathered = gather_no_grad(F.normalize(shuffled, dim=1))
        unshuffled = torch.empty_like(gathered)
        unshuffled[permutation] = gathered
        return unshuffled[offset : offset + n], unshuffled

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        f1, q1 = self.query(x1)
        k2, all_k2 = self.keys(x2, progress.step, view=1)
        loss = info_nce(q1, k2, self.queue, self.cfg.temperature)
        enqueue = [all_k2]
        if self.cfg.symmetric:
            _, q2 = self.query(x2)
            k1, all_k1 = self.keys(x1, progress.step, view=0)
            loss = loss + info_nce(q2, k1, self.queue, self.cfg.temperature)
            enqueue = [all_k1, all_k2]
        self._pending_keys = torch.cat(enqueue)
        return {"loss": loss, "features": f1.detach(), "embedding": q1.detach()}

    def momentum_at(self, step: int, total_steps: int) -> float:
        """m used for the update after optimizer step ``step`` (= before the keys of step + 1)."""
        if self.cfg.momentum_schedule == "constant":
            return self.cfg.momentum
        return cosine_momentum(self.cfg.momentum, step + 1, total_steps)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` at the pointer (overwriting the oldest) and advance it, wrapping at K."""
        positions = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue.index_copy_(0, positions, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        m = self.momentum_at(progress.step, progress.total_steps)
        ema_update_(self.key_backbone, self.backbone, m)
        ema_update_(self.key_projector, self.projector, m)
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None
        average_split_batchnorm_statistics_(self)
