"""CPC: patches cut by ``unfold`` are encoded one by one, the context network is causal (row i sees
rows ≤ i only), the loss is ``cpc_loss`` of the predictions and targets, layer normalization keeps
each patch independent of the batch, training lowers the loss, and the shipped recipes train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from siamssl.backbones import build_backbone
from siamssl.errors import ConfigError
from siamssl.losses import cpc_loss
from siamssl.methods import CPC, Batch
from siamssl.methods.cpc import MaskedContextNetwork
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.methods.helpers import progress
from tests.methods.training_helpers import shipped_config_raw, train, view_pool

REPO = Path(__file__).resolve().parents[2]


def _method(**options) -> CPC:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet_narrow", cifar_stem=True, widths=(8, 16, 16, 32))
    settings = dict(patch_size=8, patch_stride=4, target_dim=8, context_dim=8, context_layers=2, offsets=(1, 2))
    settings.update(options)
    return CPC(backbone, dim, CPC.Config(**settings))


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("row", [0, 2, 4])
def test_context_at_row_i_ignores_every_row_below(row):
    torch.manual_seed(0)
    network = MaskedContextNetwork(dim=6, hidden_dim=5, layers=3)
    latents = torch.randn(2, 6, 6, 4)
    changed = latents.clone()
    changed[:, :, row + 1 :] = torch.randn_like(changed[:, :, row + 1 :]) * 5
    with torch.no_grad():
        before, after = network(latents), network(changed)
    torch.testing.assert_close(after[:, :, : row + 1], before[:, :, : row + 1], rtol=0, atol=0)
    if row + 1 < 6:
        assert (after[:, :, row + 1 :] - before[:, :, row + 1 :]).abs().max() > 1e-3


def test_context_reaches_one_row_further_up_per_block():
    """Receptive field: 3 blocks see rows i−3..i; a change in row 0 reaches rows 0..3, not row 4."""
    torch.manual_seed(0)
    network = MaskedContextNetwork(dim=6, hidden_dim=5, layers=3)
    latents = torch.randn(1, 6, 6, 4)
    changed = latents.clone()
    changed[:, :, 0] += 3.0
    with torch.no_grad():
        difference = (network(changed) - network(latents)).abs().amax(dim=(0, 1, 3))
    assert (difference[:4] > 0).all() and (difference[4:] == 0).all(), difference


def test_grid_is_the_backbone_on_each_unfolded_patch():
    method = _method().eval()
    images = _images(2)
    with torch.no_grad():
        grid = method.encode_grid(images)  # 16 px, 8 px patches every 4 px: 3×3
        assert grid.shape == (2, method.feature_dim, 3, 3)
        for i, j in [(0, 0), (1, 2), (2, 1)]:
            patch = images[:, :, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8]
            torch.testing.assert_close(grid[:, :, i, j], method.backbone(patch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(method.embed(images), grid.mean(dim=(2, 3)))


def test_forward_is_cpc_loss_of_predictions_k_rows_ahead():
    method = _method(prediction_scale=0.5)
    images = _images(4, seed=1)
    out = method(Batch(views=[images], index=torch.arange(4)), progress(0))
    with torch.no_grad():
        latents = method.encode_grid(images)
        context = method.context_network(latents)
        targets = method.target_head(latents).permute(0, 2, 3, 1)
        predictions = torch.stack([0.5 * p(context) for p in method.predictors]).permute(0, 1, 3, 4, 2)
        expected = cpc_loss(predictions, targets, [1, 2])
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    assert len(method.predictors) == 2  # one linear W_k per offset
    assert out["features"].shape == (4, method.feature_dim)


def test_layer_norm_backbone_has_no_batch_statistics():
    """v2's layer normalization: no BatchNorm left, and a patch's features do not depend on the other
    patches or images of the batch (in training mode), the shortcut BatchNorm would open."""
    method = _method().train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in method.backbone.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in method.backbone.modules())
    images = _images(3, seed=2)
    alone = method.encode_grid(images[:1])
    together = method.encode_grid(images)[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    batch_norm = _method(backbone_norm="batch").train()
    assert (batch_norm.encode_grid(images[:1]) - batch_norm.encode_grid(images)[:1]).abs().max() > 1e-3


def test_training_lowers_the_loss():
    method = _method()
    pool = [[views[0]] for views in view_pool(4, batch_size=16)]
    losses = train(method, pool, steps=24, optim={"name": "adamw", "base_lr": 2e-3, "weight_decay": 0.0, "lr_scaling": "none"})
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses


def test_bad_geometry_fails_with_one_line():
    with pytest.raises(ConfigError, match="offsets"):
        _method(offsets=(0,))
    with pytest.raises(ConfigError, match="patch_stride"):
        _method(patch_stride=9)
    method = _method(offsets=(3,))
    with pytest.raises(ConfigError, match="rows"):
        method(Batch(views=[_images(2)], index=torch.arange(2)), progress(0))  # 3×3 grid, nothing 3 rows ahead
    with pytest.raises(ConfigError, match="smaller than"):
        method.embed(_images(1, size=6))


@pytest.mark.parametrize("recipe,extra", [("cpc", ()), ("cpc_imagenet", ("method.patch_size=8", "method.patch_stride=4"))])
def test_shipped_recipe_trains_two_steps(tmp_path, recipe, extra):
    raw = shipped_config_raw(str(REPO / "configs" / f"{recipe}.yaml"), str(tmp_path / "run"), *extra)
    summary = Trainer(config_from_dict(raw)).fit()
    assert summary["steps"] == 2 and math.isfinite(summary["z_std"]) and summary["z_std"] > 0
