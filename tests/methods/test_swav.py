"""SwAV as facebookresearch/swav ``main_swav.py``: codes from the large crops only, unit
prototypes frozen at the start, the per-rank queue of embeddings, no collapse in a short run, and
the shipped recipes through the real trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import siamssl.methods.swav as swav_module
from siamssl.errors import ConfigError
from siamssl.losses import sinkhorn_knopp, swav_loss
from siamssl.methods import Batch, MethodContext, SwAV, TrainingProgress
from siamssl.methods.multicrop import forward_by_resolution
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import assert_resume_is_exact, shipped_config_raw, tiny_backbone, train, view_pool

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _method(global_batch: int = 8, **options) -> SwAV:
    backbone, dim = tiny_backbone()
    cfg = SwAV.Config(**{"hidden_dim": 32, "proj_dim": 16, "num_prototypes": 12, **options})
    context = MethodContext(num_samples=64, global_batch_size=global_batch, steps_per_epoch=2, total_steps=20, image_size=16)
    return SwAV.from_config(cfg, backbone, dim, context)


def _crops(batch: int = 8, small: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(small)]


def _scores(method: SwAV, crops: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        z = F.normalize(method.projector(forward_by_resolution(method.backbone, crops)), dim=1)
        return method.prototypes(z).view(len(crops), crops[0].shape[0], -1)


def test_codes_come_from_the_large_crops_only(monkeypatch: pytest.MonkeyPatch) -> None:
    method = _method()
    crops = _crops()
    seen: list[torch.Tensor] = []

    def recording_sinkhorn(scores: torch.Tensor, *args) -> torch.Tensor:
        seen.append(scores.clone())
        return sinkhorn_knopp(scores, *args)

    monkeypatch.setattr(swav_module, "sinkhorn_knopp", recording_sinkhorn)
    out = method(Batch(views=crops, index=torch.arange(8)), TrainingProgress(0, 20, 0, 2))
    scores = _scores(method, crops)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], scores[0])
    torch.testing.assert_close(seen[1], scores[1])
    codes = torch.stack([sinkhorn_knopp(scores[0], 0.05, 3), sinkhorn_knopp(scores[1], 0.05, 3)])
    torch.testing.assert_close(out["loss"], swav_loss(scores, codes, [0, 1], 0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(8))


def test_prototypes_are_unit_norm_and_frozen_for_the_first_steps() -> None:
    """While frozen the prototypes get no update at all (no gradient, so no weight decay or
    momentum either) while the backbone trains; afterwards they move and are renormalized after
    every step."""
    method = _method(freeze_prototypes_steps=3)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(12))
    initial = method.prototypes.weight.detach().clone()
    backbone_before = method.backbone.conv1.weight.detach().clone()
    pool = [_crops(seed=s) for s in range(2)]
    train(method, pool, 3, dict(name="sgd", base_lr=0.1, weight_decay=5e-4), steps_per_epoch=2)
    # Only the renormalization's rounding (~1e-8) may touch them; one SGD step moves them ~1e-2.
    torch.testing.assert_close(method.prototypes.weight, initial, rtol=0, atol=1e-6)
    assert not torch.equal(method.backbone.conv1.weight, backbone_before)
    progress = TrainingProgress(3, 20, 1, 2)
    out = method(Batch(views=pool[0], index=torch.arange(8)), progress)
    out["loss"].backward()
    method.on_before_optimizer_step(progress)
    assert method.prototypes.weight.grad is not None
    with torch.no_grad():
        method.prototypes.weight -= 0.5 * method.prototypes.weight.grad
    method.on_after_optimizer_step(progress)
    assert (method.prototypes.weight - initial).abs().max() > 1e-3
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(12))


def test_queue_fills_from_its_epoch_newest_first_and_is_used_once_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """queue_length 40 at global batch 8 keeps 40 rows (a multiple of 8); filling starts at epoch 1
    (step 2 with 2 steps per epoch); after 5 pushes the queue is full and its scores under the
    current prototypes are prepended to the batch's before Sinkhorn."""
    method = _method(queue_length=44, queue_start_epoch=1)
    assert method.queue.shape == (2, 40, 16)
    seen: list[torch.Tensor] = []

    def recording_sinkhorn(scores: torch.Tensor, *args) -> torch.Tensor:
        seen.append(scores.clone())
        return sinkhorn_knopp(scores, *args)

    monkeypatch.setattr(swav_module, "sinkhorn_knopp", recording_sinkhorn)
    pushed: list[torch.Tensor] = []
    for step in range(8):
        crops = _crops(seed=step)
        seen.clear()
        out = method(Batch(views=crops, index=torch.arange(8)), TrainingProgress(step, 20, step // 2, 2))
        assert torch.isfinite(out["loss"])
        scores = _scores(method, crops)
        if step < 2:
            assert not method.queue.any()
        else:
            with torch.no_grad():
                z = F.normalize(method.projector(forward_by_resolution(method.backbone, crops)), dim=1).view(4, 8, -1)
            pushed.append(z[:2])
            recent = pushed[::-1][:5]
            for age, items in enumerate(recent):
                torch.testing.assert_close(method.queue[:, 8 * age : 8 * (age + 1)], items)
        used = step >= 2 + 5
        assert [s.shape[0] for s in seen] == [48 if used else 8] * 2
        if used:
            for i in range(2):
                expected = torch.cat([queue_before[i] @ method.prototypes.weight.t(), scores[i]])
                torch.testing.assert_close(seen[i], expected)
        queue_before = method.queue.clone()


def test_queue_length_must_hold_a_global_batch() -> None:
    with pytest.raises(ConfigError, match="smaller than the global batch"):
        _method(global_batch=64, queue_length=32)
    with pytest.raises(ConfigError, match="distinct"):
        _method(crops_for_assign=[0, 0])


def test_short_multicrop_run_does_not_collapse() -> None:
    """Collapse shows as the loss stuck at ln K with one prototype for everything; 100 steps with 2+2
    crops bring the loss well below ln K (≈ 2.8 against 3.4) and spread the samples over many
    prototypes (≈ 20 of 30)."""
    pool = view_pool(4, 16, small_crops=2)
    backbone, dim = tiny_backbone()
    method = SwAV(backbone, dim, SwAV.Config(hidden_dim=64, proj_dim=32, num_prototypes=30, freeze_prototypes_steps=8))
    losses = train(method, pool, 100, dict(name="sgd", base_lr=0.05, weight_decay=5e-4))
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < math.log(30) - 0.4
    clusters = torch.cat([_scores(method, crops)[0].argmax(dim=1) for crops in pool]).unique().numel()
    assert clusters >= 8


def _last_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r][-1]


def test_tiny_config_trains_through_the_trainer(tmp_path: Path) -> None:
    summary = Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.max_steps=3", method="swav"))).fit()
    assert summary["steps"] == 3 and math.isfinite(_last_loss(tmp_path / "run"))


@pytest.mark.parametrize("name", ["swav.yaml", "swav_imagenet.yaml"])
def test_shipped_config_trains_two_steps(tmp_path: Path, name: str) -> None:
    cfg = config_from_dict(shipped_config_raw(str(CONFIGS / name), str(tmp_path / "run")))
    assert Trainer(cfg).fit()["steps"] == 2
    assert math.isfinite(_last_loss(tmp_path / "run"))


def test_resume_restores_the_queue_exactly(tmp_path: Path) -> None:
    """The tiny config's queue is used from step 2 on: resuming at step 2 must restore its rows."""
    assert_resume_is_exact(tmp_path, "swav")
