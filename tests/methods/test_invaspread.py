"""InvaSpread: the loss of both views in one BatchNorm batch through a linear 128-d l2-normalized
head, no collapse, and the shipped recipes train through the trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siamssl.losses import invariant_spreading_loss
from siamssl.methods import InvaSpread
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.methods.helpers import progress, tiny_backbone, train, two_views
from tests.methods.training_helpers import shipped_config_raw

REPO = Path(__file__).resolve().parents[2]


def _method(**options) -> InvaSpread:
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    return InvaSpread(backbone, dim, InvaSpread.Config(**{"embedding_dim": 8, **options}))


def test_loss_is_the_invariant_spreading_loss_of_one_concatenated_batch():
    method = _method(temperature=0.2)
    batch = two_views(8, seed=1)
    x1, x2 = batch.views
    out = method(batch, progress(0))
    with torch.no_grad():
        f = method.projector(method.backbone(torch.cat([x1, x2])))
        expected = invariant_spreading_loss(f[:8], f[8:], 0.2)
        separate = invariant_spreading_loss(method.projector(method.backbone(x1)), method.projector(method.backbone(x2)), 0.2)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out["loss"], separate, rtol=1e-3)  # per-view BatchNorm would be another loss
    assert out["embedding"].shape == (8, 8)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(8))
    assert out["features"].shape == (8, method.feature_dim)


def test_the_head_is_one_linear_layer_as_in_the_official_model():
    method = _method()
    assert isinstance(method.projector, torch.nn.Linear)
    assert method.projector.out_features == 8 and method.projector.bias is not None


def test_no_collapse():
    std = train(_method(), steps=60)
    assert std > 0.6 / math.sqrt(8), std


@pytest.mark.parametrize("recipe", ["invaspread", "invaspread_imagenet"])
def test_shipped_recipe_trains_two_steps(tmp_path, recipe):
    raw = shipped_config_raw(str(REPO / "configs" / f"{recipe}.yaml"), str(tmp_path / "run"))
    summary = Trainer(config_from_dict(raw)).fit()
    assert summary["steps"] == 2 and math.isfinite(summary["z_std"]) and summary["z_std"] > 0
    assert raw["method"]["temperature"] == 0.1 and raw["method"]["embedding_dim"] == 128
