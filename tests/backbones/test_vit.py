"""ViT backbones: [CLS] features of torchvision's VisionTransformer (head removed), MoCo v3's fixed
sin-cos positions, initialization and frozen random patch projection (no gradient, never updated)."""

from __future__ import annotations

import math

import pytest
import torch

from siamssl.backbones import build_backbone, sincos_position_embedding
from siamssl.errors import ConfigError

TINY = dict(image_size=8, patch_size=4, hidden_dim=16, num_layers=2, num_heads=2)


def test_returns_cls_feature_of_the_configured_width():
    model, dim = build_backbone("vit_tiny", **TINY)
    assert dim == 16 and model(torch.randn(3, 3, 8, 8)).shape == (3, 16)
    small, small_dim = build_backbone("vit_small", image_size=32, patch_size=4, num_layers=1)
    assert small_dim == 384 and small.encoder.layers[0].self_attention.num_heads == 6
    assert small.encoder.pos_embedding.shape == (1, 1 + 64, 384)
    tiny, tiny_dim = build_backbone("vit_tiny", image_size=32, patch_size=4, num_layers=1)
    assert tiny_dim == 192 and tiny.encoder.layers[0].self_attention.num_heads == 3


def test_sincos_positions_follow_the_formula_and_are_frozen():
    table = sincos_position_embedding(grid_size=3, dim=8)
    assert table.shape == (1, 10, 8) and torch.count_nonzero(table[0, 0]) == 0
    row, col = 1, 2  # patch 1·3 + 2 = 5 → token 6
    omega = [1.0, 1.0 / 10000 ** 0.5]
    expected = [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega]
    expected += [math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
    torch.testing.assert_close(table[0, 6], torch.tensor(expected))
    model, _ = build_backbone("vit_tiny", pos_embedding="sincos", **TINY)
    assert not model.encoder.pos_embedding.requires_grad
    torch.testing.assert_close(model.encoder.pos_embedding.detach(), sincos_position_embedding(2, 16))


def test_mocov3_init_treats_q_k_v_as_three_matrices():
    torch.manual_seed(0)
    model, _ = build_backbone("vit_tiny", init="mocov3", **TINY)
    attention = model.encoder.layers[0].self_attention
    bound = math.sqrt(6.0 / (16 + 16))  # one 16×16 block, not the 48×16 stack (sqrt(6/64))
    largest = float(attention.in_proj_weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    assert torch.count_nonzero(attention.in_proj_bias) == 0
    assert float(model.class_token.detach().abs().max()) < 1e-5
    conv_bound = math.sqrt(6.0 / (3 * 4 * 4 + 16))
    assert float(model.conv_proj.weight.detach().abs().max()) <= conv_bound


def test_frozen_patch_embedding_gets_no_gradient_and_never_moves():
    torch.manual_seed(0)
    model, _ = build_backbone("vit_tiny", freeze_patch_embedding=True, **TINY)
    frozen = [p.clone() for p in model.conv_proj.parameters()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 8, 8)).pow(2).sum().backward()
        optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in model.conv_proj.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.conv_proj.parameters()))
    assert model.encoder.layers[0].mlp[0].weight.grad is not None


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="image_size=30 is not divisible by backbone.patch_size=4"):
        build_backbone("vit_tiny", image_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="hidden_dim=18 is not divisible by backbone.num_heads=4"):
        build_backbone("vit_tiny", image_size=8, patch_size=4, hidden_dim=18, num_heads=4)


def test_native_size_is_torchvisions_forward_and_other_sizes_interpolate_the_positions():
    """At the native size: exactly torchvision's forward. For a smaller crop (multi-crop) the patch
    position embeddings are the bicubic resize of the native grid, the [CLS] entry unchanged."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model, _ = build_backbone("vit_tiny", image_size=16, patch_size=4, hidden_dim=16, num_layers=2, num_heads=2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), VisionTransformer.forward(model, x), rtol=0, atol=0)
    small = model(torch.randn(2, 3, 8, 8))
    assert small.shape == (2, 16) and torch.isfinite(small).all()
    grid = model.encoder.pos_embedding[:, 1:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
    resized = model.position_embedding(2, 2)
    torch.testing.assert_close(resized[:, 0], model.encoder.pos_embedding[:, 0])
    torch.testing.assert_close(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 4, 16))
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        model(torch.randn(1, 3, 10, 10))


def _seeded_vit(**options):
    torch.manual_seed(0)
    return build_backbone("vit_tiny", **{**TINY, "num_layers": 3, **options})[0]


def test_drop_path_rate_zero_is_the_current_model_and_eval_mode_is_the_identity():
    """Stochastic depth adds no parameter and draws no random number at construction: the same seed
    gives the same weights with and without it, and in eval mode the same outputs."""
    plain, dropping = _seeded_vit(), _seeded_vit(drop_path_rate=0.4)
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropping.state_dict().values()))
    images = torch.randn(6, 3, 8, 8)
    plain.eval(), dropping.eval()
    assert torch.equal(plain(images), dropping(images))
    plain.train()
    torch.manual_seed(1)
    first = plain(images)
    assert torch.equal(first, plain(images))  # rate 0 draws nothing: train mode is deterministic


def test_drop_path_is_active_in_train_mode_at_dinos_linearly_rising_rates():
    model = _seeded_vit(drop_path_rate=0.4)
    rates = [[m.rate for m in block.modules() if type(m).__name__ == "DropPath"] for block in model.encoder.layers]
    assert rates == [[], [0.2, 0.2], [0.4, 0.4]]  # linspace(0, 0.4, 3), both branches of a block
    model.train()
    images = torch.randn(64, 3, 8, 8)
    torch.manual_seed(1)
    a = model(images)
    b = model(images)
    model.eval()
    reference = model(images)
    assert not torch.allclose(a, b) and not torch.allclose(a, reference)
    assert torch.equal(reference, model(images))  # eval mode: deterministic


def test_drop_path_zeroes_whole_samples_and_keeps_the_expectation():
    from siamssl.backbones.vit import drop_path

    x = torch.ones(20000, 3, 2)
    torch.manual_seed(0)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    torch.testing.assert_close(per_sample.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert bool((per_sample == per_sample[:, :1]).all())  # one draw per sample
    assert abs(float(out.mean()) - 1.0) < 0.02 and abs(float((per_sample[:, 0] == 0).float().mean()) - 0.25) < 0.01
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    with pytest.raises(ConfigError):
        build_backbone("vit_tiny", drop_path_rate=1.0, **TINY)


@torch.no_grad()
def test_dino_init_is_trunc_normal_002_with_zero_biases():
    model, _ = build_backbone("vit_small", image_size=32, patch_size=4, num_layers=2, init="dino")
    block = model.encoder.layers[0]
    weights = torch.cat([block.self_attention.in_proj_weight.flatten(), block.mlp[0].weight.flatten(), block.mlp[3].weight.flatten()])
    assert abs(float(weights.std()) - 0.02) < 0.001 and float(weights.abs().max()) < 0.2
    for tensor in (model.class_token, model.encoder.pos_embedding):
        assert abs(float(tensor.std()) - 0.02) < 0.004
    assert not block.self_attention.in_proj_bias.any() and not block.mlp[0].bias.any()
    assert torch.equal(block.ln_1.weight, torch.ones(384)) and not block.ln_1.bias.any()
    torchvision_default, _ = build_backbone("vit_small", image_size=32, patch_size=4, num_layers=2)
    assert float(torchvision_default.encoder.layers[0].mlp[0].weight.std()) > 0.03  # xavier, not 0.02
