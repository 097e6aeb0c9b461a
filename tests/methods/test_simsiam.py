"""SimSiam: the ablation switches do what the paper says, and stop-gradient is what prevents collapse
(Chen & He 2021, Fig. 2: without it the per-channel std of the l2-normalized output falls to 0)."""

import math

import pytest
import torch
import torch.nn.functional as F

from siamssl.backbones import build_backbone
from siamssl.data.shapes import generate_shapes
from siamssl.methods import Batch, SimSiam, TrainingProgress
from siamssl.config import OptimConfig
from siamssl.optim import build_optimizer

PROGRESS = TrainingProgress(0, 1, 0, 1)


def _method(**options):
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet_narrow", cifar_stem=True, widths=(8, 16, 16, 32))
    return SimSiam(backbone, dim, SimSiam.Config(proj_dim=64, proj_layers=2, pred_hidden_dim=16, **options))


def _views(n=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return Batch([x, x + 0.3 * torch.randn(x.shape, generator=g)], torch.arange(n))


def test_loss_is_the_symmetrized_negative_cosine_with_stopped_targets():
    method = _method()
    batch = _views()
    out = method(batch, PROGRESS)
    z1, z2 = method.projector(method.backbone(batch.views[0])), method.projector(method.backbone(batch.views[1]))
    p1, p2 = method.predictor(z1), method.predictor(z2)
    expected = -0.5 * (F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean())
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert out["embedding"].shape == (8, 64) and not out["embedding"].requires_grad


def test_stop_gradient_blocks_the_target_branch():
    # With stop-gradient, the projector gets gradient only through the predictor path: zeroing the
    # predictor's last layer must then zero the projector's gradient. Without it, it does not.
    for stop_gradient, expect_zero in ((True, True), (False, False)):
        method = _method(stop_gradient=stop_gradient)
        with torch.no_grad():
            method.predictor[-1].weight.zero_()
        method(_views(), PROGRESS)["loss"].backward()
        grad = method.projector[0].weight.grad
        assert (grad is None or torch.count_nonzero(grad) == 0) == expect_zero


def test_asymmetric_uses_one_direction():
    method = _method(symmetric=False)
    batch = _views()
    z1, z2 = method.projector(method.backbone(batch.views[0])), method.projector(method.backbone(batch.views[1]))
    expected = -F.cosine_similarity(method.predictor(z1), z2.detach()).mean()
    assert torch.allclose(method(batch, PROGRESS)["loss"], expected, atol=1e-6)


def test_predictor_variants_and_parameter_groups():
    none = _method(predictor="none")
    assert isinstance(none.predictor, torch.nn.Identity)
    assert [g.name for g in none.parameter_groups()] == ["encoder"]
    fixed = _method(predictor="fixed_random")
    assert all(not p.requires_grad for p in fixed.predictor.parameters())
    assert [g.name for g in fixed.parameter_groups()] == ["encoder"]
    learned = _method(predictor_lr="fixed")
    groups = {g.name: g for g in learned.parameter_groups()}
    assert groups["predictor"].fixed_lr and not groups["encoder"].fixed_lr
    assert not _method(predictor_lr="scheduled").parameter_groups()[1].fixed_lr


def _augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random scale/translate/flip crops and brightness: a minimal batched augmentation."""
    n = images.shape[0]
    scale = torch.empty(n).uniform_(0.5, 1.0, generator=g)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=g) * 2 - 1) * (1 - scale).unsqueeze(1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False)
    return (out * torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=g) - 0.5) / 0.25


def _final_embedding_std(stop_gradient: bool, steps: int = 300) -> float:
    images, _ = generate_shapes(256, 16, seed=0)
    images = images.float() / 255
    method = _method(stop_gradient=stop_gradient)
    optimizer = build_optimizer(method.parameter_groups(), OptimConfig(weight_decay=5e-4), peak_lr=0.5)
    g = torch.Generator().manual_seed(2)
    stds = []
    for step in range(steps):
        batch_images = images[torch.randint(0, 256, (64,), generator=g)]
        out = method(Batch([_augment(batch_images, g), _augment(batch_images, g)], torch.arange(64)), TrainingProgress(step, steps, 0, steps))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        if step >= steps - 60:
            stds.append(F.normalize(out["embedding"], dim=1).std(dim=0).mean().item())
    return sum(stds) / len(stds)


@pytest.mark.slow
def test_without_stop_gradient_the_output_collapses_and_with_it_it_does_not():
    healthy = 1 / math.sqrt(64)
    with_sg = _final_embedding_std(stop_gradient=True)
    without_sg = _final_embedding_std(stop_gradient=False)
    assert with_sg > 0.85 * healthy
    assert without_sg < 0.6 * healthy


# ------------------------------------------------------------------------------------ DirectPred


def test_directpred_predictor_is_set_from_the_correlation_of_the_projections():
    """F̂ starts at the uncentred correlation of both views' projections (the predictor inputs, not
    the predictions), and after the optimizer step W = U diag(sqrt(s/s_max) + ε) Uᵀ of F̂."""
    from siamssl.heads import DirectPredictor, DirectPredOptions, directpred_weight

    method = _method(predictor="directpred", directpred=DirectPredOptions(rho=0.3, eps=0.05))
    assert isinstance(method.predictor, DirectPredictor) and list(method.predictor.parameters()) == []
    assert [g.name for g in method.parameter_groups()] == ["encoder"]
    batch = _views()
    out = method(batch, PROGRESS)
    with torch.no_grad():
        z = torch.cat([method.projector(method.backbone(v)) for v in batch.views])
    torch.testing.assert_close(method.predictor.correlation, z.t() @ z / z.shape[0], rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    method.on_after_optimizer_step(PROGRESS)
    w = method.predictor.weight
    torch.testing.assert_close(w, directpred_weight(method.predictor.correlation, 0.05), rtol=0, atol=0)
    # W commutes with F̂ (shared eigenvectors) and is positive definite.
    f = method.predictor.correlation
    torch.testing.assert_close(w @ f, f @ w, rtol=0, atol=1e-5 * f.abs().max().item())
    assert torch.linalg.eigvalsh(w).min() > 0.04


def test_directpred_in_eval_mode_does_not_touch_the_statistics():
    method = _method(predictor="directpred")
    method.eval()
    method(_views(), PROGRESS)
    assert int(method.predictor.num_observed) == 0


def test_directpred_options_are_config_keys(tmp_path):
    from siamssl.errors import ConfigError
    from siamssl.config import config_from_dict
    from tests.conftest import tiny_raw

    cfg = config_from_dict(tiny_raw(tmp_path, "method.predictor=directpred", "method.directpred.rho=0.99", "method.directpred.freq=5"))
    assert (cfg.method.directpred.rho, cfg.method.directpred.eps, cfg.method.directpred.freq) == (0.99, 0.01, 5)
    with pytest.raises(ConfigError, match="method.directpred"):
        config_from_dict(tiny_raw(tmp_path, "method.predictor=directpred", "method.directpred.freq=0"))
    with pytest.raises(ConfigError, match="method.directpred.rho"):
        config_from_dict(tiny_raw(tmp_path, "method.directpred.rh=0.5"))


def test_directpred_run_resumes_exactly(tmp_path):
    from tests.conftest import tiny_raw
    from tests.methods.resume_check import assert_resume_is_exact

    extra = ("method.predictor=directpred", "method.directpred.freq=2", "eval.monitors=[]")
    state = assert_resume_is_exact(tiny_raw(tmp_path / "a", *extra), tiny_raw(tmp_path / "b", *extra))
    assert int(state["predictor.num_updates"]) == 8
