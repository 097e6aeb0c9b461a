"""Backbones by name: ``build_backbone("resnet18", cifar_stem=True) -> (module, feature_dim)``.

Registered: resnet18, resnet34, resnet50 (torchvision, fc removed), resnet_narrow (small, for CPU).
"""

from siamssl.backbones import resnet as _resnet  # noqa: F401  (registers the ResNets)
from siamssl.backbones.registry import BACKBONES, build_backbone
from siamssl.backbones.resnet import NarrowResNet, NarrowResNetConfig, ResNetConfig

__all__ = ["BACKBONES", "NarrowResNet", "NarrowResNetConfig", "ResNetConfig", "build_backbone"]
