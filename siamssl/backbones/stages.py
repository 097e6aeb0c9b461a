"""The stages of a backbone: pooled intermediate features, for layer-wise probes and shallow targets.

A *stage* is a point in the backbone after which a representation can be read:

* ResNets (torchvision's and :class:`~siamssl.backbones.resnet.NarrowResNet`): the outputs of
  ``layer1`` ... ``layer4``, global-average-pooled to (B, C). The last stage is exactly the
  backbone's output.
* ViTs (:class:`~siamssl.backbones.vit.AnySizeVisionTransformer`): the output of each transformer
  block, read at the [CLS] token after the encoder's final LayerNorm (as DINO's
  ``get_intermediate_layers`` normalizes every block it returns). The last stage is exactly the
  backbone's output.

These functions only read module structure; they know nothing of methods.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from siamssl.errors import ConfigError

_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _is_resnet(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, name) for name in ("conv1", "bn1", "relu", "maxpool", *_RESNET_STAGES))


def _is_vit(backbone: nn.Module) -> bool:
    return hasattr(backbone, "encoder") and hasattr(backbone, "conv_proj") and hasattr(backbone, "class_token")


def stage_names(backbone: nn.Module) -> list[str]:
    """Names of the stages, shallow to deep: ``layer1``..``layer4`` or ``block1``..``blockN``."""
    if _is_resnet(backbone):
        return list(_RESNET_STAGES)
    if _is_vit(backbone):
        return [f"block{i + 1}" for i in range(len(backbone.encoder.layers))]
    raise ConfigError(f"backbone {type(backbone).__name__} exposes no stages (ResNets and ViTs do)")


@torch.no_grad()
def stage_dims(backbone: nn.Module) -> list[int]:
    """Width of each stage's pooled features."""
    if _is_resnet(backbone):
        return [_resnet_stage_width(getattr(backbone, name)) for name in _RESNET_STAGES]
    if _is_vit(backbone):
        return [backbone.hidden_dim] * len(backbone.encoder.layers)
    stage_names(backbone)  # raises the error
    return []


def _resnet_stage_width(layer: nn.Module) -> int:
    last_block = list(layer.children())[-1]
    last_norm = [m for m in last_block.modules() if isinstance(m, nn.modules.batchnorm._NormBase)][-1]
    return int(last_norm.num_features)


def forward_stages(backbone: nn.Module, images: Tensor, num_stages: Optional[int] = None) -> list[Tensor]:
    """Pooled (B, C_s) features of the first ``num_stages`` stages (default: all), one forward pass.

    Gradients flow as in the backbone's own forward (wrap in ``torch.no_grad()`` for evaluation).
    Stages past ``num_stages`` are not computed.
    """
    names = stage_names(backbone)
    count = len(names) if num_stages is None else num_stages
    if not 1 <= count <= len(names):
        raise ConfigError(f"num_stages={num_stages} is outside 1..{len(names)} for this backbone")
    if _is_resnet(backbone):
        return _resnet_stages(backbone, images, count)
    return _vit_stages(backbone, images, count)


def _resnet_stages(backbone: nn.Module, images: Tensor, count: int) -> list[Tensor]:
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
    pooled = []
    for name in _RESNET_STAGES[:count]:
        x = getattr(backbone, name)(x)
        pooled.append(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
    return pooled


def _vit_stages(backbone: nn.Module, images: Tensor, count: int) -> list[Tensor]:
    n, _, height, width = images.shape
    patch = backbone.patch_size
    if height % patch or width % patch:
        raise ValueError(f"ViT input {height}x{width} is not divisible by the patch size {patch}")
    tokens = backbone.conv_proj(images).flatten(2).transpose(1, 2)
    tokens = torch.cat([backbone.class_token.expand(n, -1, -1), tokens], dim=1)
    tokens = tokens + backbone.position_embedding(height // patch, width // patch)
    encoder = backbone.encoder
    tokens = encoder.dropout(tokens)
    pooled = []
    for block in list(encoder.layers)[:count]:
        tokens = block(tokens)
        pooled.append(encoder.ln(tokens)[:, 0])
    return pooled


class TruncatedBackbone(nn.Module):
    """The first ``num_stages`` stages of ``backbone``, pooled: a shallower encoder that shares the
    backbone's parameters (a module wrapper, no copy)."""

    def __init__(self, backbone: nn.Module, num_stages: int) -> None:
        super().__init__()
        stage_names(backbone)
        self.backbone = backbone
        self.num_stages = num_stages
        self.feature_dim = stage_dims(backbone)[num_stages - 1]

    def forward(self, images: Tensor) -> Tensor:
        return forward_stages(self.backbone, images, self.num_stages)[-1]
