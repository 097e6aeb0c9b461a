"""Small building blocks shared by the method tests: a tiny BN backbone, synthetic two-view batches
and a plain SGD training loop through the method protocol."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from siamssl.methods.base import Batch, SSLMethod, TrainingProgress

IMAGE_SHAPE = (3, 4, 4)


def tiny_backbone(feature_dim: int = 16) -> tuple[nn.Module, int]:
    """Images (B, 3, 4, 4) -> features (B, feature_dim), with a BatchNorm2d (so split BN applies)."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(),
    )
    return net, feature_dim


def two_views(batch: int, seed: int, clusters: int = 8, noise: float = 0.3) -> Batch:
    """Views of ``batch`` samples from ``clusters`` random prototypes, each with its own noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(clusters, (batch,), generator=g)
    base = centers[labels]
    views = [base + noise * torch.randn(batch, *IMAGE_SHAPE, generator=g) for _ in range(2)]
    return Batch(views=views, index=torch.arange(batch), labels=labels)


def progress(step: int, total: int = 10) -> TrainingProgress:
    return TrainingProgress(step=step, total_steps=total, epoch=0, steps_per_epoch=total)


def train(method: SSLMethod, steps: int, batch: int = 32, lr: float = 0.05, seed: int = 0) -> float:
    """SGD through the protocol; returns the mean per-channel std of the l2-normalized embedding
    (≈ 1/√d when healthy, 0 at collapse) on a fresh batch."""
    params = [p for g in method.parameter_groups() for p in g.params]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    method.train()
    for step in range(steps):
        out = method(two_views(batch, seed=seed * 100_000 + step), progress(step, steps))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        method.on_after_optimizer_step(progress(step, steps))
    out = method(two_views(256, seed=seed * 100_000 + steps), progress(steps - 1, steps))
    return float(F.normalize(out["embedding"], dim=1).std(dim=0).mean())
