"""InstDisc: the memory bank update rule, Z estimated once, the proximal term, the noise draw
(identical for one process on 2B samples and two processes on B), and real training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siamssl.backbones import build_backbone
from siamssl.losses import full_softmax_loss, nce_loss, nce_normalizer
from siamssl.methods import Batch, InstDisc, TrainingProgress
from siamssl.methods import memory_bank as memory_bank_module
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.methods.training_helpers import shipped_config_raw

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 40


def _method(**options) -> InstDisc:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet_narrow", cifar_stem=True, widths=(8, 16, 16, 32))
    cfg = InstDisc.Config(**{"embedding_dim": 16, "num_negatives": 12, **options})
    return InstDisc(backbone, dim, cfg, NUM_SAMPLES)


def _batch(seed: int, size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(views=[torch.randn(size, 3, 16, 16, generator=g)], index=torch.randperm(NUM_SAMPLES, generator=g)[:size])


def _progress(step: int) -> TrainingProgress:
    return TrainingProgress(step=step, total_steps=100, epoch=0, steps_per_epoch=5)


def _step(method, batch, step: int) -> dict:
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    out = method(batch, _progress(step))
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    method.on_after_optimizer_step(_progress(step))
    return out


@pytest.mark.parametrize("loss", ["nce", "full_softmax"])
def test_bank_holds_momentum_mixed_normalized_features_only_at_the_batch_indices(loss):
    method = _method(loss=loss, bank_momentum=0.3)
    before = method.bank.features.clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(NUM_SAMPLES), atol=1e-6)
    batch = _batch(1)
    out = _step(method, batch, 0)
    v = out["embedding"]
    assert torch.allclose(v.norm(dim=1), torch.ones(len(v)), atol=1e-6)
    expected = F.normalize(0.3 * before[batch.index] + 0.7 * v, dim=1)
    after = method.bank.features
    torch.testing.assert_close(after[batch.index], expected, rtol=0, atol=1e-6)
    untouched = torch.ones(NUM_SAMPLES, dtype=torch.bool)
    untouched[batch.index] = False
    assert torch.equal(after[untouched], before[untouched])


def test_loss_is_the_bank_loss_and_z_is_estimated_once_then_fixed_and_checkpointed():
    method = _method(loss="nce", temperature=0.1)
    batch = _batch(2)
    bank0 = method.bank.features.clone()
    out = _step(method, batch, 0)
    candidates = method.bank.draw_candidates(batch.index, 12, 0)
    assert torch.equal(candidates[:, 0], batch.index) and candidates.shape == (8, 13)
    z = nce_normalizer(out["embedding"], bank0, candidates, 0.1)
    torch.testing.assert_close(method.bank.nce_normalizer, z, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["loss"], nce_loss(out["embedding"], bank0, candidates, z, 0.1), rtol=1e-6, atol=1e-6)
    for step in (1, 2):  # new batches, new bank contents: Z does not move
        _step(method, _batch(10 + step), step)
        assert torch.equal(method.bank.nce_normalizer, z)
    # A fresh model loading the checkpoint keeps Z and the noise stream instead of re-estimating.
    fresh = _method(loss="nce", temperature=0.1)
    fresh.bank.noise_seed += 1
    fresh.load_state_dict(method.state_dict())
    assert fresh.bank.noise_seed == method.bank.noise_seed
    fresh(_batch(20), _progress(3))
    assert torch.equal(fresh.bank.nce_normalizer, z)
    assert torch.equal(fresh.bank.draw_candidates(batch.index, 12, 7), method.bank.draw_candidates(batch.index, 12, 7))


def test_full_softmax_loss_and_proximal_term():
    plain = _method(loss="full_softmax")
    batch = _batch(3)
    out = plain(batch, _progress(0))
    torch.testing.assert_close(out["loss"], full_softmax_loss(out["embedding"], plain.bank.features, batch.index, 0.07))
    proximal = _method(loss="full_softmax", proximal_weight=2.5)
    out_p = proximal(batch, _progress(0))
    # λ‖v_i^(t) − v_i^(t−1)‖² against the bank entry from the last visit, averaged over the batch.
    distance = (out_p["embedding"] - proximal.bank.features[batch.index]).pow(2).sum(1).mean()
    torch.testing.assert_close(out_p["proximal"], distance)
    torch.testing.assert_close(out_p["loss"], out["loss"] + 2.5 * distance, rtol=1e-6, atol=1e-6)


def test_noise_is_identical_for_one_process_on_2b_and_two_processes_on_b(monkeypatch):
    bank = _method().bank
    index = torch.randperm(NUM_SAMPLES)[:8]
    single = bank.draw_candidates(index, 50, step=5)
    assert torch.equal(single, bank.draw_candidates(index, 50, step=5))  # a function of (seed, step)
    assert not torch.equal(single, bank.draw_candidates(index, 50, step=6))
    assert int(single[:, 1:].min()) >= 0 and int(single[:, 1:].max()) < NUM_SAMPLES
    halves = []
    for rank in (0, 1):
        monkeypatch.setattr(memory_bank_module, "world_size", lambda: 2)
        monkeypatch.setattr(memory_bank_module, "local_row_offset", lambda rows, r=rank: r * rows)
        halves.append(bank.draw_candidates(index[rank * 4 : rank * 4 + 4], 50, step=5))
    assert torch.equal(torch.cat(halves), single)


def test_bad_options_fail_with_one_line(tmp_path):
    from siamssl.errors import ConfigError

    for override, message in (("method.temperature=0", "temperature"), ("method.bank_momentum=1.0", "bank_momentum"),
                              ("method.num_negatives=0", "num_negatives")):
        with pytest.raises(ConfigError, match=message):
            Trainer(config_from_dict(tiny_raw(tmp_path / override, override, method="instdisc")))


@pytest.mark.parametrize("config", ["tiny", "instdisc.yaml", "instdisc_imagenet.yaml"])
def test_two_training_steps_through_the_trainer(tmp_path, config):
    if config == "tiny":
        raw = tiny_raw(tmp_path / "run", "trainer.max_steps=2", "eval.monitors=[embedding_std]", method="instdisc")
    else:
        raw = shipped_config_raw(str(REPO / "configs" / config), str(tmp_path / "run"))
    summary = Trainer(config_from_dict(raw)).fit()
    assert summary["steps"] == 2
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_short_run_on_shapes_spreads_the_embeddings(tmp_path):
    """Exact softmax, the CIFAR recipe's loss: 128 steps on 64 images. The embeddings of the training
    images spread out (mean pairwise cosine 0.91 → about 0.77; after 16 steps it has not moved yet)
    while the loss falls; a collapsing run (e.g. the loss negated) ends with a mean cosine near 1."""
    raw = tiny_raw(
        tmp_path / "run", "method.loss=full_softmax", "method.temperature=0.1", "trainer.epochs=32", "optim.lr_scaling=none",
        "optim.base_lr=0.05", "trainer.log_every_steps=32", "eval.every_n_epochs=0", "eval.monitors=[embedding_std]",
        method="instdisc",
    )
    trainer = Trainer(config_from_dict(raw))
    images = trainer.data.train.images.float() / 255.0
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (trainer.data.mean, trainer.data.std))
    method = trainer.method

    def mean_cosine() -> float:
        method.eval()
        with torch.no_grad():
            v = F.normalize(method.head(method.backbone((images - mean) / std)), dim=1)
        method.train()
        cosine = v @ v.t()
        return float((cosine.sum() - cosine.diagonal().sum()) / (len(v) * (len(v) - 1)))

    before = mean_cosine()
    trainer.fit()
    assert mean_cosine() < before - 0.1
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0  # ≈ 5.1 → 3.6


def test_interrupt_and_resume_matches_the_uninterrupted_run(tmp_path):
    """Bank, Z and the noise stream are checkpointed: a run stopped at step 3 (SIGINT) and resumed
    ends with exactly the weights and bank of the run that was never stopped."""
    from siamssl.checkpoint import load_checkpoint
    from siamssl.train.trainer import Interrupted
    from tests.train import test_trainer  # noqa: F401  (registers the "interrupt_at_step_3" monitor)

    reference = tiny_raw(tmp_path / "reference", "eval.monitors=[embedding_std]", method="instdisc")
    Trainer(config_from_dict(reference)).fit()
    raw = tiny_raw(tmp_path / "interrupted", "eval.monitors=[embedding_std, interrupt_at_step_3]", method="instdisc")
    with pytest.raises(Interrupted):
        Trainer(config_from_dict(raw)).fit()
    raw["trainer"]["resume"] = True
    raw["eval"]["monitors"] = ["embedding_std"]
    Trainer(config_from_dict(raw)).fit()
    expected = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    actual = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == actual.keys() and "bank._extra_state" in expected
    for key, value in expected.items():
        assert torch.equal(value, actual[key]) if isinstance(value, torch.Tensor) else value == actual[key], key
