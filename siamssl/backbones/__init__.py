"""Backbones by name: ``build_backbone("resnet18", cifar_stem=True) -> (module, feature_dim)``.

Registered: resnet18, resnet34, resnet50 (torchvision, fc removed), resnet_narrow (small, for CPU),
vit_tiny, vit_small (torchvision ViT, [CLS] feature), and by name from other libraries
(:mod:`siamssl.backbones.external`): ``timm`` (any timm model, optional extra) and ``torchvision``
(any torchvision ResNet, ViT or ConvNeXt). :mod:`siamssl.backbones.split_bn` holds the
split BatchNorm of MoCo's Shuffle-BN; :mod:`siamssl.backbones.stages` the pooled outputs of every
stage (``forward_stages``) of siamssl's ResNets and ViTs.
"""

from siamssl.backbones import external as _external  # noqa: F401  (registers timm and torchvision)
from siamssl.backbones import resnet as _resnet  # noqa: F401  (registers the ResNets)
from siamssl.backbones import vit as _vit  # noqa: F401  (registers the ViTs)
from siamssl.backbones.registry import BACKBONES, build_backbone
from siamssl.backbones.resnet import NarrowResNet, NarrowResNetConfig, ResNetConfig
from siamssl.backbones.stages import TruncatedBackbone, forward_stages, stage_dims, stage_names
from siamssl.backbones.split_bn import SplitBatchNorm, convert_split_batchnorm
from siamssl.backbones.vit import ViTConfig, ViTTinyConfig, build_vit, sincos_position_embedding

__all__ = [
    "BACKBONES",
    "NarrowResNet",
    "NarrowResNetConfig",
    "ResNetConfig",
    "SplitBatchNorm",
    "TruncatedBackbone",
    "ViTConfig",
    "ViTTinyConfig",
    "build_backbone",
    "build_vit",
    "convert_split_batchnorm",
    "forward_stages",
    "sincos_position_embedding",
    "stage_dims",
    "stage_names",
]
