import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from siamssl.backbones import BACKBONES, build_backbone
from siamssl.errors import ConfigError


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet_narrow", 256)])
def test_feature_dim_and_output_shape(name, dim):
    model, feature_dim = build_backbone(name, cifar_stem=True)
    assert feature_dim == dim
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_cifar_stem_is_3x3_stride_1_without_maxpool():
    model, _ = build_backbone("resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    imagenet, _ = build_backbone("resnet18", cifar_stem=False)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    # The CIFAR stem keeps 32x32 resolution into layer1; the ImageNet stem divides it by 4.
    x = torch.randn(1, 3, 32, 32)
    assert model.relu(model.bn1(model.conv1(x))).shape[-1] == 32
    assert imagenet.maxpool(imagenet.relu(imagenet.bn1(imagenet.conv1(x)))).shape[-1] == 8


def test_zero_init_residual_switch():
    on, _ = build_backbone("resnet18", zero_init_residual=True)
    off, _ = build_backbone("resnet18", zero_init_residual=False)
    assert torch.count_nonzero(on.layer1[0].bn2.weight) == 0
    assert torch.count_nonzero(off.layer1[0].bn2.weight) > 0


def test_torchvision_naming_loads_strictly():
    model, _ = build_backbone("resnet18")
    reference = tv_resnet18()
    reference.fc = nn.Identity()
    reference.load_state_dict(model.state_dict(), strict=True)


def test_in_channels_option():
    model, _ = build_backbone("resnet18", cifar_stem=True, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_unknown_backbone_and_option_errors():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_backbone("resnet81")
    with pytest.raises(ConfigError, match="did you mean 'cifar_stem'"):
        build_backbone("resnet18", cifar_steam=True)
    assert {"resnet18", "resnet34", "resnet50", "resnet_narrow"} <= set(BACKBONES.names())
