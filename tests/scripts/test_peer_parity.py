"""scripts/peer_parity.py: the protocol conversion between lightly's losses and siamssl's, and a
dry run of every method in both frameworks (needs lightly: the ``peers`` extra)."""

from __future__ import annotations

import json

import pytest
import torch
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss

from siamssl.losses import barlow_twins_loss, negative_cosine_similarity, normalized_mse, nt_xent
from tests.scripts.loader import load_script


@pytest.fixture(scope="module")
def peer_parity():
    return load_script("peer_parity")


def _pair(seed: int, n: int = 16, d: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4))  # type: ignore[return-value]


def _siamssl_loss(method, a, b, c, d):
    """The loss of siamssl's method module (its forward's formula) on online outputs a, b and targets c, d."""
    if method == "simsiam":
        return 0.5 * (negative_cosine_similarity(a, d) + negative_cosine_similarity(b, c))
    if method == "byol":
        return normalized_mse(a, d) + normalized_mse(b, c)
    if method == "simclr":
        return 2.0 * nt_xent(a, b, 0.5)
    return barlow_twins_loss(a, b, 0.005)


def _lightly_loss(method, a, b, c, d):
    """lightly's loss as peer_parity's LightlyModel composes it."""
    if method in ("simsiam", "byol"):
        criterion = NegativeCosineSimilarity()
        return 0.5 * (criterion(a, d.detach()) + criterion(b, c.detach()))
    if method == "simclr":
        return NTXentLoss(temperature=0.5)(a, b)
    return BarlowTwinsLoss(lambda_param=5e-3)(a, b)


@pytest.mark.parametrize("method", ["simsiam", "byol", "simclr", "barlow_twins"])
def test_siamssl_gradient_is_loss_scale_times_lightlys(peer_parity, method):
    """The learning-rate ÷ k and weight-decay × k conversion is exact only if siamssl's gradient is
    k × lightly's for the same embeddings (Barlow Twins: lightly standardizes with the unbiased
    std, siamssl like BatchNorm with the biased one: equal up to about 1/N)."""
    online = _pair(0)
    ours = torch.autograd.grad(_siamssl_loss(method, *online), online[:2])
    theirs = torch.autograd.grad(_lightly_loss(method, *online), online[:2])
    scale = peer_parity.LOSS_SCALE[method]
    tolerance = 0.15 if method == "barlow_twins" else 1e-5  # siamssl computes losses in float32
    for g_ours, g_theirs in zip(ours, theirs):
        assert torch.allclose(g_ours, scale * g_theirs, rtol=tolerance, atol=tolerance * g_theirs.abs().max().item())


def test_siamssl_protocol_is_lightlys_with_the_loss_scale(peer_parity, tmp_path):
    args = peer_parity.parse_args(["--dry-run", "--out", str(tmp_path)])
    args.batch_size = 256
    for method in peer_parity.METHODS:
        raw = peer_parity.siamssl_config(method, "siamssl", args, tmp_path, 0, tmp_path / "run")
        scale = peer_parity.LOSS_SCALE[method]
        expected_lr = 0.06 if method == "simsiam" else 0.12
        assert raw["optim"]["base_lr"] * scale == pytest.approx(expected_lr)
        assert raw["optim"]["weight_decay"] / scale == pytest.approx(5e-4)
        assert raw["optim"]["lr_scaling"] == "none" and raw["optim"]["exclude_bias_and_norm"] is False
        assert raw["trainer"]["max_steps"] == args.steps and raw["backbone"]["zero_init_residual"] is False


def test_dry_run_trains_every_method_in_both_frameworks(peer_parity, tmp_path):
    assert peer_parity.main(["--dry-run", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "peer_parity.json").read_text())
    assert len(record["runs"]) == 2 * len(peer_parity.METHODS)
    for run in record["runs"]:
        assert 0.0 <= run["knn"] <= 1.0 and 0.0 <= run["knn_random_init"] <= 1.0 and run["images_per_s"] > 0
    rows = {(r["method"], r["framework"]) for r in record["summary"]}
    assert rows == {(m, f) for m in peer_parity.METHODS for f in ("siamssl", "lightly")}
    assert all(r["speed_vs_lightly"] > 0 for r in record["summary"])
    table = (tmp_path / "peer_parity.md").read_text()
    assert table.count("\n") == 2 + len(rows)


def test_unknown_method_is_a_one_line_error(peer_parity, capsys):
    with pytest.raises(SystemExit):
        peer_parity.parse_args(["--dry-run", "--methods", "simsiam,mocov9"])
    assert "unknown method(s) mocov9" in capsys.readouterr().err
