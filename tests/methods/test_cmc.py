"""CMC: RGB → Lab against known colours and an independent CIE reference, the L (1 channel) and
ab (2 channel) encoders, both contrast directions, both banks, evaluation features, training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from siamssl.backbones import build_backbone
from siamssl.errors import ConfigError
from siamssl.losses import full_softmax_loss, nce_loss
from siamssl.methods import CMC, Batch, MethodContext, TrainingProgress
from siamssl.methods.cmc import LAB_MEAN, LAB_STD, rgb_to_lab
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import shipped_config_raw

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 40
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _lab(rgb: tuple[float, float, float]) -> list[float]:
    return rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)).view(3).tolist()


def _cie_lab_reference(rgb: torch.Tensor) -> torch.Tensor:
    """CIE 1976 L*a*b* from the standards, written independently: IEC 61966-2-1 sRGB (linearization
    and the D65 matrix to 7 digits), CIE ε = 216/24389 and κ = 24389/27, D65 white from the matrix."""
    rgb = rgb.double()
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
    xyz = (linear.permute(0, 2, 3, 1) @ m.t()) / m.sum(dim=1)
    eps, kappa = 216 / 24389, 24389 / 27
    f = torch.where(xyz > eps, xyz ** (1 / 3), (kappa * xyz + 16) / 116)
    lab = torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)
    return lab.permute(0, 3, 1, 2)


def test_lab_of_known_colours():
    for rgb, expected, tol in (
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0), 1e-2),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1e-9),
        ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20), 1e-2),  # pure red
        ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18), 1e-2),
        ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86), 1e-2),
    ):
        assert _lab(rgb) == pytest.approx(expected, abs=tol), rgb
    # The official normalization constants are the a and b extremes of the sRGB gamut.
    assert _lab((0.0, 1.0, 0.0))[1] == pytest.approx(-86.183, abs=2e-3)  # green: min a
    assert _lab((1.0, 0.0, 1.0))[1] == pytest.approx(98.233, abs=2e-3)  # magenta: max a
    assert _lab((0.0, 0.0, 1.0))[2] == pytest.approx(-107.857, abs=2e-3)  # blue: min b
    assert _lab((1.0, 1.0, 0.0))[2] == pytest.approx(94.478, abs=2e-3)  # yellow: max b


def test_lab_matches_independent_cie_reference_on_random_colours():
    rgb = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    rgb[0, :, 0, :3] = 0.02  # the linear (dark) branches of both piecewise functions
    lab = rgb_to_lab(rgb)
    assert lab.dtype == torch.float32
    # skimage's 6-digit constants vs the standard's 7-digit ones: a few hundredths at most.
    torch.testing.assert_close(lab.double(), _cie_lab_reference(rgb), rtol=0, atol=0.05)


def _context() -> MethodContext:
    def make_backbone(**overrides):
        return build_backbone("resnet_narrow", **{"cifar_stem": True, "widths": (8, 16, 16, 32), **overrides})

    return MethodContext(num_samples=NUM_SAMPLES, global_batch_size=8, steps_per_epoch=5, total_steps=100,
                         image_size=16, make_backbone=make_backbone, image_mean=MEAN, image_std=STD)


def _method(**options) -> CMC:
    torch.manual_seed(0)
    backbone, dim = _context().make_backbone()
    return CMC.from_config(CMC.Config(**{"embedding_dim": 16, "num_negatives": 12, **options}), backbone, dim, _context())


def _batch(seed: int) -> tuple[Batch, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(8, 3, 16, 16, generator=g)
    normalized = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return Batch(views=[normalized], index=torch.randperm(NUM_SAMPLES, generator=g)[:8]), rgb


def _progress(step: int) -> TrainingProgress:
    return TrainingProgress(step=step, total_steps=100, epoch=0, steps_per_epoch=5)


def test_encoders_take_the_l_channel_and_the_ab_channels_of_the_undone_normalization():
    method = _method()
    assert method.backbone.l.conv1.in_channels == 1 and method.backbone.ab.conv1.in_channels == 2
    batch, rgb = _batch(1)
    seen = {}
    method.backbone.l.register_forward_hook(lambda m, inputs, out: seen.__setitem__("l", inputs[0]))
    method.backbone.ab.register_forward_hook(lambda m, inputs, out: seen.__setitem__("ab", inputs[0]))
    method(batch, _progress(0))
    lab = (rgb_to_lab(rgb) - torch.tensor(LAB_MEAN).view(1, 3, 1, 1)) / torch.tensor(LAB_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["l"], lab[:, :1], rtol=0, atol=1e-4)
    torch.testing.assert_close(seen["ab"], lab[:, 1:], rtol=0, atol=1e-4)
    assert float(lab.abs().max()) <= 1.0 + 1e-4  # the official normalization maps the gamut into [-1, 1]


@pytest.mark.parametrize("loss", ["nce", "full_softmax"])
def test_both_directions_are_contrasted_and_summed(loss):
    method = _method(loss=loss)
    batch, _ = _batch(2)
    bank_l, bank_ab = method.bank_l.features.clone(), method.bank_ab.features.clone()
    out = method(batch, _progress(0))
    v_l, v_ab, _, _ = method.encode(batch.views[0])
    if loss == "nce":
        candidates = method.bank_l.draw_candidates(batch.index, 12, 0)
        expected_l = nce_loss(v_l, bank_ab, candidates, method.bank_ab.nce_normalizer, 0.07)
        expected_ab = nce_loss(v_ab, bank_l, candidates, method.bank_l.nce_normalizer, 0.07)
        assert float(method.bank_ab.nce_normalizer) > 0 and float(method.bank_l.nce_normalizer) > 0
    else:
        expected_l = full_softmax_loss(v_l, bank_ab, batch.index, 0.07)
        expected_ab = full_softmax_loss(v_ab, bank_l, batch.index, 0.07)
    torch.testing.assert_close(out["loss_l"], expected_l, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss_ab"], expected_ab, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss"], expected_l + expected_ab, rtol=1e-6, atol=1e-6)
    # The banks carry no gradient: L anchors train only the L encoder, ab anchors only the ab encoder,
    # and the sum trains both.
    l_params, ab_params = list(method.backbone.l.parameters()), list(method.backbone.ab.parameters())
    grads = torch.autograd.grad(out["loss_l"].new_tensor(0) + expected_l, l_params + ab_params, allow_unused=True)
    assert all(g is None for g in grads[len(l_params):]) and any(g is not None and g.abs().sum() > 0 for g in grads[: len(l_params)])
    grads = torch.autograd.grad(out["loss"], l_params + ab_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads[: len(l_params)])
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(l_params):])


def test_both_banks_hold_momentum_mixed_features_at_the_batch_indices_after_a_step():
    method = _method(bank_momentum=0.5)
    batch, _ = _batch(3)
    before = {name: bank.features.clone() for name, bank in (("l", method.bank_l), ("ab", method.bank_ab))}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    out = method(batch, _progress(0))
    v_l, v_ab, _, _ = (t.detach() for t in method.encode(batch.views[0]))
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    method.on_after_optimizer_step(_progress(0))
    untouched = torch.ones(NUM_SAMPLES, dtype=torch.bool)
    untouched[batch.index] = False
    for name, bank, v in (("l", method.bank_l, v_l), ("ab", method.bank_ab, v_ab)):
        expected = torch.nn.functional.normalize(0.5 * before[name][batch.index] + 0.5 * v, dim=1)
        torch.testing.assert_close(bank.features[batch.index], expected, rtol=0, atol=1e-6)
        assert torch.equal(bank.features[untouched], before[name][untouched])


def test_embed_concatenates_both_encoders_backbone_features():
    method = _method().eval()
    batch, rgb = _batch(4)
    features = method.embed(batch.views[0])
    assert features.shape == (8, 2 * 32) and method.feature_dim == 64
    lab = method.lab_input(batch.views[0])
    with torch.no_grad():
        expected = torch.cat([method.backbone.l(lab[:, :1]), method.backbone.ab(lab[:, 1:])], dim=1)
    assert torch.equal(features, expected)


def test_missing_normalization_statistics_fail_clearly():
    context = _context()
    backbone, dim = context.make_backbone()
    bare = MethodContext(num_samples=4, global_batch_size=2, steps_per_epoch=1, total_steps=1, image_size=16,
                         make_backbone=context.make_backbone)
    with pytest.raises(ConfigError, match="image_mean"):
        CMC.from_config(CMC.Config(), backbone, dim, bare)


@pytest.mark.parametrize("config", ["tiny", "cmc.yaml", "cmc_imagenet.yaml"])
def test_two_training_steps_through_the_trainer(tmp_path, config):
    if config == "tiny":
        raw = tiny_raw(tmp_path / "run", "trainer.max_steps=2", "eval.monitors=[embedding_std]", method="cmc")
    else:
        raw = shipped_config_raw(str(REPO / "configs" / config), str(tmp_path / "run"))
    summary = Trainer(config_from_dict(raw)).fit()
    assert summary["steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert records and all(torch.isfinite(torch.tensor([r["loss"], r["loss_l"], r["loss_ab"]])).all() for r in records)


def test_short_run_on_shapes_learns_without_collapsing(tmp_path):
    """NCE, the official loss: 16 steps on 64 images. The untrained L embeddings of the shapes are
    already nearly parallel (mean pairwise cosine ≈ 0.98); training must not shrink their spread
    ``1 − mean cosine`` (a collapsing run, e.g. with the loss negated, ends with a spread 0.7x its start
    after 16 steps and ≈ 0.001 after 32) while the loss falls."""
    raw = tiny_raw(tmp_path / "run", "trainer.epochs=4", "optim.lr_scaling=none", "optim.base_lr=0.05",
                   "trainer.log_every_steps=4", "eval.every_n_epochs=0", "eval.monitors=[embedding_std]", method="cmc")
    trainer = Trainer(config_from_dict(raw))
    images = trainer.data.train.images.float() / 255.0
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (trainer.data.mean, trainer.data.std))
    method = trainer.method

    def spread() -> float:
        method.eval()
        with torch.no_grad():
            v_l = method.encode((images - mean) / std)[0]
        method.train()
        cosine = v_l @ v_l.t()
        return 1.0 - float((cosine.sum() - cosine.diagonal().sum()) / (len(v_l) * (len(v_l) - 1)))

    before = spread()
    trainer.fit()
    assert spread() >= 0.9 * before
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0]


def test_trainer_passes_the_normalization_the_views_were_made_with(tmp_path):
    dataset_stats = Trainer(config_from_dict(tiny_raw(tmp_path / "a", "trainer.max_steps=1", method="cmc")))
    assert dataset_stats.method.image_mean.flatten().tolist() == pytest.approx(dataset_stats.data.mean)
    assert dataset_stats.method.image_std.flatten().tolist() == pytest.approx(dataset_stats.data.std)
    explicit = Trainer(config_from_dict(tiny_raw(
        tmp_path / "b", "trainer.max_steps=1", "data.augment.mean=[0.1, 0.2, 0.3]", "data.augment.std=[0.4, 0.5, 0.6]", method="cmc"
    )))
    assert explicit.method.image_mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert explicit.method.image_std.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
