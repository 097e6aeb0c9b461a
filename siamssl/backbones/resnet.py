"""ResNet backbones: torchvision's ResNet-18/34/50 without ``fc``, optionally with the CIFAR stem,
and a narrow ResNet for fast CPU runs and tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock

from siamssl.backbones.registry import BACKBONES


@dataclass
class ResNetConfig:
    """Options shared by every ResNet backbone.

    ``cifar_stem``: conv1 becomes 3×3 stride 1 and the max-pool is removed, the standard change for
    32×32 inputs (MoCo CIFAR demo ``ModelBase``; google-research/simclr ``cifar_stem``). A plain
    ImageNet stem on CIFAR is the most common cause of low CIFAR numbers.
    ``zero_init_residual``: the last BN γ of each residual block starts at zero (Goyal et al. 2017),
    as in the SimSiam, MoCo v3, Barlow Twins and VICReg code.
    """

    cifar_stem: bool = False
    zero_init_residual: bool = True
    in_channels: int = 3


def _adapt_stem(model: nn.Module, cfg: ResNetConfig) -> None:
    width = model.conv1.out_channels
    if cfg.cifar_stem:
        model.conv1 = nn.Conv2d(cfg.in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif cfg.in_channels != 3:
        model.conv1 = nn.Conv2d(cfg.in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    if cfg.cifar_stem or cfg.in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")


def _torchvision_resnet(name: str, cfg: ResNetConfig) -> tuple[nn.Module, int]:
    model = getattr(resnet, name)(weights=None, zero_init_residual=cfg.zero_init_residual)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    _adapt_stem(model, cfg)
    return model, feature_dim


@BACKBONES.register("resnet18", config=ResNetConfig)
def resnet18(cfg: ResNetConfig) -> tuple[nn.Module, int]:
    """torchvision ResNet-18, 512-d features."""
    return _torchvision_resnet("resnet18", cfg)


@BACKBONES.register("resnet34", config=ResNetConfig)
def resnet34(cfg: ResNetConfig) -> tuple[nn.Module, int]:
    """torchvision ResNet-34, 512-d features."""
    return _torchvision_resnet("resnet34", cfg)


@BACKBONES.register("resnet50", config=ResNetConfig)
def resnet50(cfg: ResNetConfig) -> tuple[nn.Module, int]:
    """torchvision ResNet-50, 2048-d features."""
    return _torchvision_resnet("resnet50", cfg)


class NarrowResNet(resnet.ResNet):
    """A ResNet of basic blocks with configurable stage widths and depths.

    Same module names as torchvision's ResNet (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so
    code that handles torchvision ResNets handles this one too.
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], zero_init_residual: bool = True) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage, (width, depth) in enumerate(zip(widths, blocks)):
            stride = 1 if stage == 0 else 2
            setattr(self, f"layer{stage + 1}", self._make_layer(BasicBlock, width, depth, stride=stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@dataclass
class NarrowResNetConfig(ResNetConfig):
    """``widths``: channels of the four stages; ``blocks``: basic blocks per stage."""

    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)


@BACKBONES.register("resnet_narrow", config=NarrowResNetConfig)
def resnet_narrow(cfg: NarrowResNetConfig) -> tuple[nn.Module, int]:
    """A narrow, shallow ResNet (default widths 32-64-128-256, one block per stage, ~1.2M
    parameters): the backbone of the quickstart and the CPU tests."""
    model = NarrowResNet(tuple(cfg.widths), tuple(cfg.blocks), cfg.zero_init_residual)
    _adapt_stem(model, cfg)
    return model, cfg.widths[-1]
