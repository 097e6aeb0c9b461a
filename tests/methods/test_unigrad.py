"""UniGrad (Tao et al., CVPR 2022): architecture of the official code, the moving-average correlation of
the normalized momentum projections, the momentum update, exact resume with F in the checkpoint,
and F (and DirectPred's F̂) all-reduced so that two processes compute what one does."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from siamssl.backbones import build_backbone
from siamssl.heads import DirectPredictor, DirectPredOptions
from siamssl.losses import unigrad_correlation, unigrad_loss
from siamssl.methods import Batch, TrainingProgress, UniGrad
from siamssl.methods.momentum import cosine_momentum
from tests.conftest import tiny_raw
from tests.methods.resume_check import assert_resume_is_exact


def _method(**options) -> UniGrad:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet_narrow", cifar_stem=True, widths=(8, 16, 16, 32))
    return UniGrad(backbone, dim, UniGrad.Config(proj_hidden_dim=32, proj_dim=16, **options))


def _views(n: int = 8, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return Batch([x, x + 0.3 * torch.randn(x.shape, generator=g)], torch.arange(n))


def test_projector_and_momentum_branch_follow_the_official_model():
    method = _method()
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [m.bias is not None for m in linears] == [False, False, True]  # no output BN, no predictor
    assert not hasattr(method, "predictor")
    for online, target in ((method.backbone, method.target_backbone), (method.projector, method.target_projector)):
        for p, q in zip(online.parameters(), target.parameters()):
            assert torch.equal(p, q) and not q.requires_grad
    trainable = {id(p) for g in method.parameter_groups() for p in g.params}
    assert trainable == {id(p) for p in list(method.backbone.parameters()) + list(method.projector.parameters())}


def test_correlation_starts_at_the_first_batch_then_is_a_moving_average():
    method = _method(rho=0.9)
    progress = TrainingProgress(0, 10, 0, 10)
    batches = [_views(seed=s) for s in (1, 2)]
    expected = None
    for batch in batches:
        method(batch, progress)
        with torch.no_grad():
            z1m, z2m = (method.target_projector(method.target_backbone(v)) for v in batch.views)
        current = unigrad_correlation(z1m, z2m)
        expected = current if expected is None else 0.9 * expected + 0.1 * current
        torch.testing.assert_close(method.correlation, expected, rtol=1e-5, atol=1e-6)
    assert bool(method.correlation_initialized)


def test_loss_uses_the_updated_correlation_and_the_other_views_momentum_projection():
    method = _method(lambd=7.0)
    batch = _views()
    out = method(batch, TrainingProgress(0, 10, 0, 10))
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(v)) for v in batch.views)
        z1m, z2m = (method.target_projector(method.target_backbone(v)) for v in batch.views)
    torch.testing.assert_close(out["loss"], unigrad_loss(z1, z2, z1m, z2m, method.correlation, 7.0), rtol=1e-5, atol=1e-6)
    expected_similarity = 0.5 * (F.cosine_similarity(z1, z2m).mean() + F.cosine_similarity(z2, z1m).mean())
    torch.testing.assert_close(out["positive_similarity"], expected_similarity, rtol=1e-5, atol=1e-6)


def test_eval_mode_forward_leaves_the_correlation_alone():
    method = _method()
    method.eval()
    method(_views(), TrainingProgress(0, 10, 0, 10))
    assert not bool(method.correlation_initialized) and torch.count_nonzero(method.correlation) == 0


def test_momentum_update_after_the_optimizer_step_uses_the_cosine_schedule():
    method = _method(base_momentum=0.9)
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_projector.parameters()]
    progress = TrainingProgress(3, 10, 0, 10)
    method.on_after_optimizer_step(progress)
    tau = cosine_momentum(0.9, 4, 10)
    assert 0.9 < tau < 1.0
    for old, online, new in zip(before, method.projector.parameters(), method.target_projector.parameters()):
        torch.testing.assert_close(new, tau * old + (1 - tau) * online.detach())


def test_training_run_resumes_exactly_with_the_correlation_in_the_checkpoint(tmp_path):
    extra = ("eval.monitors=[]",)
    state = assert_resume_is_exact(tiny_raw(tmp_path / "a", *extra, method="unigrad"), tiny_raw(tmp_path / "b", *extra, method="unigrad"))
    assert bool(state["correlation_initialized"]) and torch.count_nonzero(state["correlation"]) > 0


# ------------------------------------------------------------------------------- two processes


class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _linear_unigrad() -> UniGrad:
    """A BatchNorm-free UniGrad (per-sample outputs do not depend on the batch split)."""
    torch.manual_seed(0)
    return UniGrad(_Flat(), 12, UniGrad.Config(proj_hidden_dim=8, proj_dim=6, proj_layers=1, rho=0.5))


def _batches() -> list[list[torch.Tensor]]:
    """Two steps of two views of 8 images (the second step exercises the moving average)."""
    g = torch.Generator().manual_seed(3)
    return [[torch.randn(8, 3, 2, 2, generator=g) for _ in range(2)] for _ in range(2)]


def _steps(method: UniGrad, batches: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """F and the projector's gradients after the steps, then DirectPred's F̂ of the same inputs."""
    directpred = DirectPredictor(12, DirectPredOptions(rho=0.5))
    for views in batches:
        method.zero_grad()
        method(Batch(views, torch.arange(views[0].shape[0])), TrainingProgress(0, 2, 0, 2))["loss"].backward()
        directpred.observe(*(v.flatten(1) for v in views))
    return [method.correlation.clone()] + [p.grad.clone() for p in method.projector.parameters()] + [directpred.correlation]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        local = [[v[rank * 4 : (rank + 1) * 4] for v in views] for views in _batches()]
        results = _steps(_linear_unigrad(), local)
        for r in results[1:-1]:  # what DDP does: average the gradients over ranks
            dist.all_reduce(r)
            r /= 2
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # tear gloo down only once no peer is still communicating (else: SIGABRT)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_compute_the_one_process_correlations_and_gradients():
    expected = _steps(_linear_unigrad(), _batches())
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(os.path.join(out_dir, "init"), out_dir), nprocs=2, join=True)
        for rank in range(2):
            actual = torch.load(os.path.join(out_dir, f"rank{rank}.pt"))
            for a, e in zip(actual, expected):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- no collapse


def test_the_negative_term_keeps_the_projections_spread():
    """λ F u is what stops collapse: with λ = 0 (positive term only, a momentum-target cosine loss)
    the per-channel std of the l2-normalized projections falls well below 1/√d in 80 steps; with
    λ = 6 it stays near it. (λ = 100 is tuned for d = 2048: F's eigenvalues scale as 1/d, so a 32-d
    projector takes λ ≈ 100·32/2048 ≈ 1.6-6.) Seeds 0-2 gave 0.85/0.68/0.79 vs 0.37/0.19/0.35."""
    from tests.methods.training_helpers import tiny_backbone, train, view_pool

    pool = view_pool(8, batch_size=32)

    def spread(lambd: float) -> float:
        backbone, dim = tiny_backbone()
        method = UniGrad(backbone, dim, UniGrad.Config(proj_hidden_dim=64, proj_dim=32, lambd=lambd))
        train(method, pool, 80, optim=dict(base_lr=0.2, weight_decay=1e-4))
        with torch.no_grad():
            z = method.projector(method.backbone(pool[0][0]))
        return F.normalize(z, dim=1).std(dim=0).mean().item() * 32**0.5

    with_negative, without = spread(6.0), spread(0.0)
    assert with_negative > 0.6 and without < 0.45
