"""CPC on images (van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
2018; the image recipe of Hénaff et al., "Data-Efficient Image Recognition with Contrastive
Predictive Coding", ICML 2020, "CPC v2", whose appendix pseudocode this follows).

The augmented image is cut into a grid of overlapping patches inside the method (``unfold``; the
data pipeline is unchanged); the backbone encodes every patch to one pooled vector ``z_{i,j}``; a
masked, PixelCNN-style context network (:class:`MaskedContextNetwork`) turns the grid into context
vectors ``c_{i,j}`` whose receptive field covers rows ≤ i only; for each prediction length ``k`` a
linear map ``W_k`` (a 1×1 convolution) predicts the target code of the patch ``k`` rows below, and
:func:`siamssl.losses.cpc_loss` scores it against every patch of every image of the global batch.
The evaluated representation (``embed``) is the backbone's patch features mean-pooled over the grid.

CPC v2's layer normalization (BatchNorm lets patches of one image communicate through the batch
statistics, a shortcut around the causal mask) is ``backbone_norm: layer``: every BatchNorm2d of
the backbone becomes a GroupNorm with one group (normalization over channels and space per patch).
Not here: v2's per-patch augmentations (the data pipeline augments the whole image once) and its
predictions from further directions (bottom-up, horizontal); only top-to-bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.errors import ConfigError
from siamssl.losses import cpc_loss
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.registry import register_method


class MaskedContextNetwork(nn.Module):
    """CPC v2's context network (appendix ``pixelCNN``): ``layers`` residual blocks of 1×1 conv →
    ReLU → (1×3) conv over the row → one zero row padded on top and a (2×1) valid conv (rows i−1
    and i) → ReLU → 1×1 conv, then a ReLU. Each block reaches one row further up and never down,
    so the output at row i depends on input rows ≤ i only. (N, D, H, W) → (N, D, H, W)."""

    def __init__(self, dim: int, hidden_dim: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, hidden_dim, 1), nn.ReLU(),
                nn.Conv2d(hidden_dim, hidden_dim, (1, 3), padding=(0, 1)),
                nn.ZeroPad2d((0, 0, 1, 0)), nn.Conv2d(hidden_dim, hidden_dim, (2, 1)), nn.ReLU(),
                nn.Conv2d(hidden_dim, dim, 1),
            )
            for _ in range(layers)
        )

    def forward(self, latents: Tensor) -> Tensor:
        context = latents
        for block in self.blocks:
            context = context + block(context)
        return F.relu(context)


def batchnorm_to_layernorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by ``GroupNorm(1, C)`` with its affine parameters."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            norm = nn.GroupNorm(1, child.num_features, eps=child.eps, affine=child.affine)
            if child.affine:
                norm.weight.data.copy_(child.weight.data)
                norm.bias.data.copy_(child.bias.data)
            setattr(module, name, norm)
        else:
            batchnorm_to_layernorm(child)
    return module


@register_method("cpc")
class CPC(SSLMethod):
    @dataclass
    class Config:
        """CPC options; defaults are CPC v2's (appendix pseudocode, ImageNet patches ◐).

        patch_size, patch_stride: the grid of patches cut from each view (64 px every 32 px: a 7×7
            grid with 50% overlap on 256 px crops ◐).
        target_dim: width of the target codes and predictions (``target_dim=64``).
        context_dim: bottleneck width of the context network's residual blocks (256).
        context_layers: residual blocks of the context network (5).
        offsets: prediction lengths k, rows ahead, one linear predictor each. The pseudocode's
            ``steps_to_ignore=2, steps_to_predict=3`` predicts only k = 3 (overlapping patches one or
            two rows down share pixels with the context).
        prediction_scale: multiplies the predictions (``emb_scale=0.1``).
        backbone_norm: "layer" (v2: BatchNorm2d → GroupNorm(1, C)) or "batch" (the backbone as built).
        """

        patch_size: int = 64
        patch_stride: int = 32
        target_dim: int = 64
        context_dim: int = 256
        context_layers: int = 5
        offsets: tuple[int, ...] = (3,)
        prediction_scale: float = 0.1
        backbone_norm: Literal["layer", "batch"] = "layer"

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "CPC.Config") -> None:
        super().__init__()
        if not cfg.offsets or min(cfg.offsets) < 1 or len(set(cfg.offsets)) != len(cfg.offsets):
            raise ConfigError(f"method.offsets={list(cfg.offsets)}: need distinct prediction lengths >= 1")
        if not 0 < cfg.patch_stride <= cfg.patch_size:
            raise ConfigError(f"method.patch_stride={cfg.patch_stride} must be in [1, patch_size={cfg.patch_size}]")
        self.cfg = cfg
        self.backbone = batchnorm_to_layernorm(backbone) if cfg.backbone_norm == "layer" else backbone
        self.feature_dim = feature_dim
        self.context_network = MaskedContextNetwork(feature_dim, cfg.context_dim, cfg.context_layers)
        self.target_head = nn.Conv2d(feature_dim, cfg.target_dim, 1)
        self.predictors = nn.ModuleList(nn.Conv2d(feature_dim, cfg.target_dim, 1) for _ in cfg.offsets)

    @classmethod
    def from_config(cls, cfg: "CPC.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "CPC":
        return cls(backbone, feature_dim, cfg)

    def encode_grid(self, images: Tensor) -> Tensor:
        """Backbone features of the patch grid: (B, C, S, S) images → (B, feature_dim, H, W)."""
        size, stride = self.cfg.patch_size, self.cfg.patch_stride
        if min(images.shape[-2:]) < size:
            raise ConfigError(f"images of {tuple(images.shape[-2:])} px are smaller than method.patch_size={size}")
        patches = images.unfold(2, size, stride).unfold(3, size, stride)  # (B, C, H, W, size, size)
        b, c, h, w = patches.shape[:4]
        features = self.backbone(patches.permute(0, 2, 3, 1, 4, 5).reshape(b * h * w, c, size, size))
        return features.view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        latents = self.encode_grid(batch.views[0])
        if latents.shape[2] <= max(self.cfg.offsets):
            raise ConfigError(f"a grid of {latents.shape[2]} rows has no target {max(self.cfg.offsets)} rows ahead")
        context = self.context_network(latents)
        targets = self.target_head(latents)  # (B, T, H, W)
        predictions = torch.stack([p(context) for p in self.predictors]) * self.cfg.prediction_scale
        loss = cpc_loss(predictions.permute(0, 1, 3, 4, 2), targets.permute(0, 2, 3, 1), self.cfg.offsets)
        return {"loss": loss, "features": latents.mean(dim=(2, 3)).detach(), "embedding": targets.mean(dim=(2, 3)).detach()}

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """The backbone's patch features mean-pooled over the grid (CPC v2's evaluation)."""
        return self.encode_grid(images).mean(dim=(2, 3))

    @torch.no_grad()
    def project(self, images: Tensor) -> Tensor:
        """The target codes mean-pooled over the grid."""
        return self.target_head(self.encode_grid(images)).mean(dim=(2, 3))
