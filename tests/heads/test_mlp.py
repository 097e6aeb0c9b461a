import pytest
import torch
from torch import nn

from siamssl.heads import build_mlp, byol_mlp, moco_v2_head, moco_v3_predictor, moco_v3_projector, simsiam_cifar_projector, simsiam_predictor, simsiam_projector


def layer_types(mlp):
    return [type(m).__name__ for m in mlp]


def test_simsiam_imagenet_projector_matches_official_builder():
    head = simsiam_projector(2048)
    assert layer_types(head) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 2048)] * 3
    assert all(l.bias is None for l in linears)  # no bias before BN (official: last bias frozen)
    assert head[-1].affine is False


def test_simsiam_cifar_projector_has_two_layers():
    head = simsiam_cifar_projector(512)
    assert layer_types(head) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert head[0].in_features == 512 and head[-1].affine is False


def test_simsiam_predictor_bottleneck_without_output_bn():
    head = simsiam_predictor()
    assert layer_types(head) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (2048, 512, 2048)
    assert head[0].bias is None and head[3].bias is not None


def test_other_presets():
    assert layer_types(moco_v2_head(2048)) == ["Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in moco_v2_head(2048) if isinstance(m, nn.Linear))
    byol = byol_mlp(2048)
    assert layer_types(byol) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert byol[0].bias is not None and byol[3].bias is None
    proj = moco_v3_projector(2048)
    assert proj[-1].affine is False and all(m.bias is None for m in proj if isinstance(m, nn.Linear))
    assert layer_types(moco_v3_predictor())[-1] == "Linear"


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_build_mlp_shapes(layers):
    head = build_mlp(5, 7, 3, num_layers=layers, output_norm="bn")
    assert head(torch.randn(4, 5)).shape == (4, 3)
    assert sum(isinstance(m, nn.Linear) for m in head) == layers


def test_build_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError):
        build_mlp(4, 4, 4, num_layers=0)
    with pytest.raises(ValueError):
        build_mlp(4, 4, 4, output_norm="layernorm")
