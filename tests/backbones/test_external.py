"""Backbones from timm and torchvision by name: classifier removed, the library's own parameter names
kept, feature size read from the model, kwargs checked when the config is loaded."""

from __future__ import annotations

import sys

import pytest
import timm
import torch
import torchvision
from torch import nn

from siamssl.backbones import build_backbone
from siamssl.backbones.external import TIMM_MISSING
from siamssl.config import config_from_dict
from siamssl.errors import ConfigError


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _backbone_config(**backbone) -> None:
    config_from_dict({"backbone": backbone})


def test_timm_resnet_keeps_timm_names_and_computes_timm_features():
    model, dim = build_backbone("timm", model="resnet18")
    reference = timm.create_model("resnet18", pretrained=False)
    assert dim == 512 == reference.num_features
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["fc.bias", "fc.weight"]
    reference.reset_classifier(0)
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model(_images()), reference(_images()))


def test_timm_cifar_stem_is_3x3_stride_1_without_maxpool():
    model, _ = build_backbone("timm", model="resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    x = _images()
    assert model.act1(model.bn1(model.conv1(x))).shape[-1] == 32  # layer1 sees full resolution
    plain, _ = build_backbone("timm", model="resnet18")
    assert plain.maxpool(plain.act1(plain.bn1(plain.conv1(x)))).shape[-1] == 8


def test_timm_feature_size_is_the_width_of_the_feature_output():
    # MobileNetV3's pre-logits layer makes its num_classes=0 output wider than num_features.
    model, dim = build_backbone("timm", model="mobilenetv3_small_050")
    assert model.num_features != dim
    with torch.no_grad():
        assert model.eval()(_images()).shape == (2, dim)
    vit, dim = build_backbone("timm", model="vit_tiny_patch16_224", kwargs={"img_size": 32, "patch_size": 8, "depth": 1})
    with torch.no_grad():
        assert dim == 192 and vit.eval()(_images()).shape == (2, 192)


@pytest.mark.parametrize(
    "backbone, message",
    [
        ({"model": "resnet18", "kwargs": {"drop_path_rat": 0.1}}, "unknown config key 'backbone.kwargs.drop_path_rat'; did you mean 'backbone.kwargs.drop_path_rate'?"),
        ({"model": "resnt18"}, "unknown timm model 'resnt18' (did you mean 'resnet18'?)"),
        ({"model": "resnet18", "kwargs": {"pretrained": True}}, "'backbone.kwargs.pretrained' is not allowed: siamssl builds backbones without pretrained weights"),
        ({"model": "resnet18", "kwargs": {"num_classes": 10}}, "'backbone.kwargs.num_classes' is not allowed"),
        ({"model": "vit_tiny_patch16_224", "cifar_stem": True}, "timm model 'vit_tiny_patch16_224' is a VisionTransformer"),
        ({"model": "resnet50d", "cifar_stem": True}, "'resnet50d' is a ResNet with a deep (multi-convolution) stem"),
        ({"model": "hf-hub:timm/resnet18.a1_in1k"}, "would download from the Hugging Face Hub"),
        ({}, "backbone.name=timm needs backbone.model"),
        ({"model": "resnet18", "modle": "x"}, "unknown config key 'backbone.modle'; did you mean 'backbone.model'?"),
    ],
)
def test_timm_config_errors_are_one_line_and_come_at_config_load(backbone, message):
    with pytest.raises(ConfigError) as error:
        _backbone_config(name="timm", **backbone)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_timm_kwargs_reach_the_model():
    _backbone_config(name="timm", model="resnet18", kwargs={"drop_path_rate": 0.1})  # a valid key passes
    model, _ = build_backbone("timm", model="vit_tiny_patch16_224", kwargs={"img_size": 32, "patch_size": 8, "depth": 2})
    assert len(model.blocks) == 2 and model.patch_embed.proj.kernel_size == (8, 8)


def test_missing_timm_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'siamssl\[timm\]'") as error:
        _backbone_config(name="timm", model="resnet18")
    assert str(error.value) == TIMM_MISSING
    build_backbone("resnet_narrow")  # the other backbones do not need it


@pytest.mark.parametrize("name, head, dim", [("resnet18", "fc", 512), ("convnext_tiny", "classifier.2", 768)])
def test_torchvision_backbone_loads_into_torchvision_strictly(name, head, dim):
    model, feature_dim = build_backbone("torchvision", model=name)
    assert feature_dim == dim
    reference = torchvision.models.get_model(name, weights=None)
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == [f"{head}.bias", f"{head}.weight"]
    owner, _, leaf = head.rpartition(".")
    setattr(reference.get_submodule(owner) if owner else reference, leaf, nn.Identity())
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model(_images()), reference(_images()))


def test_torchvision_resnet_cifar_stem_and_vit_any_size():
    model, _ = build_backbone("torchvision", model="resnext50_32x4d", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    vit, dim = build_backbone("torchvision", model="vit_b_32", kwargs={"image_size": 64})
    assert dim == 768 and "heads.head.weight" not in vit.state_dict()
    with torch.no_grad():  # the native size and a smaller multi-crop size both work
        assert vit.eval()(_images(64)).shape == (2, 768) and vit(_images(32)).shape == (2, 768)


@pytest.mark.parametrize(
    "backbone, message",
    [
        ({"model": "resnet81"}, "(did you mean 'resnet18'?)"),
        ({"model": "efficientnet_b0"}, "backbone.name=timm backbone.model=<timm name>"),
        ({"model": "resnet18", "kwargs": {"zero_init_residul": True}}, "did you mean 'backbone.kwargs.zero_init_residual'?"),
        ({"model": "resnet18", "kwargs": {"weights": "DEFAULT"}}, "without pretrained weights"),
        ({"model": "vit_b_16", "kwargs": {"patch_size": 4}}, "torchvision's vit_b_16 sets it"),
        ({"model": "convnext_tiny", "cifar_stem": True}, "torchvision model 'convnext_tiny' is a ConvNeXt"),
    ],
)
def test_torchvision_config_errors(backbone, message):
    with pytest.raises(ConfigError) as error:
        _backbone_config(name="torchvision", **backbone)
    assert message in str(error.value) and "\n" not in str(error.value)
