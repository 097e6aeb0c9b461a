import pytest
import torch

from siamssl.backbones import TruncatedBackbone, build_backbone, forward_stages, stage_dims, stage_names
from siamssl.errors import ConfigError


@pytest.mark.parametrize("name, options", [
    ("resnet_narrow", {"cifar_stem": True, "widths": [8, 16, 24, 32]}),
    ("resnet18", {"cifar_stem": False}),
])
def test_resnet_stages_end_at_the_backbone_output(name, options):
    torch.manual_seed(0)
    model, dim = build_backbone(name, zero_init_residual=False, **options)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        stages = forward_stages(model, x)
        expected = model(x)
    assert stage_names(model) == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.shape[1] for s in stages] == stage_dims(model)
    assert stage_dims(model)[-1] == dim
    torch.testing.assert_close(stages[-1], expected)
    # Stage 2 is the pooled output of layer2 applied to layer1's map.
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        layer2 = model.layer2(model.layer1(stem))
    torch.testing.assert_close(stages[1], layer2.mean(dim=(2, 3)))


def test_vit_stages_end_at_the_backbone_output():
    torch.manual_seed(0)
    model, dim = build_backbone("vit_tiny", image_size=16, patch_size=4, num_layers=3, hidden_dim=24, num_heads=2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        stages = forward_stages(model, x)
        expected = model(x)
    assert stage_names(model) == ["block1", "block2", "block3"]
    assert [s.shape for s in stages] == [torch.Size([2, dim])] * 3
    torch.testing.assert_close(stages[-1], expected)
    assert not torch.allclose(stages[0], stages[-1])


def test_truncated_backbone_shares_parameters_and_stops_early():
    model, _ = build_backbone("resnet_narrow", cifar_stem=True, widths=[8, 16, 24, 32])
    half = TruncatedBackbone(model, 2)
    assert half.feature_dim == 16
    x = torch.randn(4, 3, 16, 16)
    out = half(x)
    assert out.shape == (4, 16)
    out.sum().backward()
    assert model.layer2[0].conv1.weight.grad is not None
    assert model.layer3[0].conv1.weight.grad is None  # never computed
    with pytest.raises(ConfigError, match="outside 1..4"):
        forward_stages(model, x, num_stages=5)
    with pytest.raises(ConfigError, match="exposes no stages"):
        stage_names(torch.nn.Linear(2, 2))
