"""Vision Transformers: torchvision's ``VisionTransformer`` at tiny/small size, returning the [CLS]
feature (the classification head is removed), with MoCo v3's options.

``vit_small``/``vit_tiny`` follow DeiT's sizes (Touvron et al. 2021): 384-d/6 heads and 192-d/3
heads, 12 blocks, MLP ratio 4. MoCo v3's ViT-S uses 12 heads (facebookresearch/moco-v3 ``vits.py``),
which ``num_heads: 12`` reproduces. For 32-pixel inputs use ``patch_size: 4`` (64 tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from siamssl.backbones.registry import BACKBONES
from siamssl.errors import ConfigError


@dataclass
class ViTConfig:
    """Options of the ViT backbones (defaults: ViT-Small/16 at 224 px).

    ``image_size``: the native input size (the learned position embedding has one entry per patch
    of it); other sizes divisible by the patch size are accepted, with the embedding interpolated
    (multi-crop's small crops, as in DINO).
    ``patch_size``: 16 for ImageNet, 4 for 32-px CIFAR images.
    ``hidden_dim``/``num_layers``/``num_heads``/``mlp_ratio``: the transformer's size.
    ``pos_embedding``: ``learned`` (torchvision) or ``sincos``, MoCo v3's fixed 2-D sin-cos embedding.
    ``init``: ``torchvision``, ``mocov3`` (xavier-uniform Linear layers with Q, K, V initialized as
    three matrices, zero biases, [CLS] ~ N(0, 1e-6), xavier-uniform patch projection; moco-v3 ``vits.py``)
    or ``dino`` (every Linear weight, the fused QKV matrix included, and the [CLS] token and position
    embedding ~ trunc_normal(0, 0.02) cut at ±2, zero biases, LayerNorms at 1/0, PyTorch's default
    Conv2d init of the patch projection; facebookresearch/dino ``vision_transformer.py``).
    ``drop_path_rate``: stochastic depth (Huang et al. 2016) of the residual branches, rising
    linearly from 0 at the first block to this rate at the last (DINO's student: 0.1, its teacher 0;
    ``vision_transformer.py`` ``dpr``); active in train mode only, so an EMA teacher in eval mode
    has none. 0 leaves the model exactly torchvision's.
    ``freeze_patch_embedding``: keep the patch projection at its random initialization (MoCo v3's
    ``--stop-grad-conv1``, which stabilizes ViT training, paper §4.3).
    """

    image_size: int = 224
    patch_size: int = 16
    hidden_dim: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    pos_embedding: Literal["learned", "sincos"] = "learned"
    init: Literal["torchvision", "mocov3", "dino"] = "torchvision"
    freeze_patch_embedding: bool = False
    drop_path_rate: float = 0.0


@dataclass
class ViTTinyConfig(ViTConfig):
    """ViT-Tiny: 192-d, 3 heads."""

    hidden_dim: int = 192
    num_heads: int = 3


def sincos_position_embedding(grid_size: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D sin-cos embedding, (1, 1 + grid², dim): a zero row for [CLS], then for the
    patch at (row, col), ``[sin(row·ω), cos(row·ω), sin(col·ω), cos(col·ω)]`` with
    ``ω_d = temperature^(-d/(dim/4))``."""
    if dim % 4:
        raise ConfigError(f"backbone.hidden_dim={dim} must be divisible by 4 for the sin-cos position embedding")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_size, dtype=torch.float32), torch.arange(grid_size, dtype=torch.float32), indexing="ij")
    row_angles = rows.flatten()[:, None] * omega[None, :]
    col_angles = cols.flatten()[:, None] * omega[None, :]
    patches = torch.cat([row_angles.sin(), row_angles.cos(), col_angles.sin(), col_angles.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), patches], dim=0)[None]


def _mocov3_init_(model: VisionTransformer) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            # The (3D, D) in-projection is three D×D matrices: xavier bound of one, not of the stack.
            bound = math.sqrt(6.0 / (module.in_proj_weight.shape[0] // 3 + module.in_proj_weight.shape[1]))
            nn.init.uniform_(module.in_proj_weight, -bound, bound)
            nn.init.zeros_(module.in_proj_bias)
    nn.init.normal_(model.class_token, std=1e-6)
    conv = model.conv_proj
    bound = math.sqrt(6.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + conv.out_channels))
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)


def _dino_init_(model: VisionTransformer) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):  # DINO's qkv is one nn.Linear(D, 3D)
            nn.init.trunc_normal_(module.in_proj_weight, std=0.02, a=-2.0, b=2.0)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.encoder.pos_embedding, std=0.02, a=-2.0, b=2.0)
    nn.init.trunc_normal_(model.class_token, std=0.02, a=-2.0, b=2.0)
    model.conv_proj.reset_parameters()


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth of a residual branch: in training, each sample's branch output is zeroed with
    probability ``rate`` and otherwise scaled by ``1 / (1 - rate)`` (so its expectation is unchanged);
    the identity in eval mode or at rate 0 (DINO ``vision_transformer.py`` ``drop_path``)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).add_(keep).floor_()
    return x.div(keep) * mask


class DropPath(nn.Module):
    """:func:`drop_path` as a module (no parameters), active in train mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"backbone.drop_path_rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def _add_stochastic_depth_(model: VisionTransformer, max_rate: float) -> None:
    """Put a :class:`DropPath` at the end of both residual branches of every block, at DINO's rates
    ``linspace(0, max_rate, depth)``. torchvision's block adds ``self.dropout(attention)`` and
    ``self.mlp(...)`` to the residual stream: the attention branch's dropout (rate 0 here) becomes the
    drop-path and the MLP gets one appended. Neither has parameters, so the state dict, the
    initialization and the random stream of the weights are those of the model without it."""
    blocks = list(model.encoder.layers)
    for index, block in enumerate(blocks):
        rate = max_rate * index / max(1, len(blocks) - 1)
        if rate == 0.0:
            continue
        if not isinstance(block.dropout, nn.Dropout) or block.dropout.p != 0.0:
            raise ConfigError("stochastic depth expects the ViT's attention dropout to be 0")
        block.dropout = DropPath(rate)
        block.mlp.append(DropPath(rate))


class AnySizeVisionTransformer(VisionTransformer):
    """torchvision's ``VisionTransformer`` returning the [CLS] feature for any input whose sides are
    multiples of the patch size: at the native size it computes exactly torchvision's forward;
    otherwise the patch position embeddings are resized bicubically to the new grid, the [CLS]
    entry kept (DINO's ``interpolate_pos_encoding``, facebookresearch/dino ``vision_transformer.py``)."""

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """(1, 1 + rows·cols, D): the position embedding for a ``rows × cols`` patch grid."""
        embedding = self.encoder.pos_embedding
        grid = self.image_size // self.patch_size
        if (rows, cols) == (grid, grid):
            return embedding
        cls, patches = embedding[:, :1], embedding[:, 1:]
        patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=(rows, cols), mode="bicubic", align_corners=False).to(embedding.dtype)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"ViT input {height}x{width} is not divisible by the patch size {self.patch_size}")
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(height // self.patch_size, width // self.patch_size)
        encoder = self.encoder
        return self.heads(encoder.ln(encoder.layers(encoder.dropout(tokens)))[:, 0])


def build_vit(cfg: ViTConfig) -> tuple[nn.Module, int]:
    """A torchvision ``VisionTransformer`` whose forward returns the (B, hidden_dim) [CLS] feature."""
    if cfg.image_size % cfg.patch_size:
        raise ConfigError(f"backbone.image_size={cfg.image_size} is not divisible by backbone.patch_size={cfg.patch_size}")
    if cfg.hidden_dim % cfg.num_heads:
        raise ConfigError(f"backbone.hidden_dim={cfg.hidden_dim} is not divisible by backbone.num_heads={cfg.num_heads}")
    model = AnySizeVisionTransformer(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        hidden_dim=cfg.hidden_dim,
        mlp_dim=int(cfg.hidden_dim * cfg.mlp_ratio),
    )
    model.heads = nn.Identity()
    if cfg.init == "mocov3":
        _mocov3_init_(model)
    elif cfg.init == "dino":
        _dino_init_(model)
    if cfg.drop_path_rate:
        _add_stochastic_depth_(model, cfg.drop_path_rate)
    if cfg.pos_embedding == "sincos":
        with torch.no_grad():
            model.encoder.pos_embedding.copy_(sincos_position_embedding(cfg.image_size // cfg.patch_size, cfg.hidden_dim))
        model.encoder.pos_embedding.requires_grad_(False)
    if cfg.freeze_patch_embedding:
        model.conv_proj.requires_grad_(False)
    return model, cfg.hidden_dim


@BACKBONES.register("vit_small", config=ViTConfig)
def vit_small(cfg: ViTConfig) -> tuple[nn.Module, int]:
    """ViT-Small (384-d, 12 blocks, 6 heads), [CLS] feature."""
    return build_vit(cfg)


@BACKBONES.register("vit_tiny", config=ViTTinyConfig)
def vit_tiny(cfg: ViTTinyConfig) -> tuple[nn.Module, int]:
    """ViT-Tiny (192-d, 12 blocks, 3 heads), [CLS] feature."""
    return build_vit(cfg)
