"""Representation properties: closed-form values on synthetic features, then the command on runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from siamssl.eval.properties import (
    PropertiesOptions,
    effective_rank,
    evaluate_properties,
    main,
    mean_abs_correlation,
    participation_ratio,
    powerlaw_exponent,
    relative_movement,
    top_variance_fraction,
)


def _with_covariance(eigenvalues: torch.Tensor, n: int = 500, seed: int = 0) -> torch.Tensor:
    """N rows whose sample covariance is exactly diag(eigenvalues) in a random orthonormal basis."""
    g = torch.Generator().manual_seed(seed)
    d = eigenvalues.numel()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x - x.mean(dim=0)
    q, _ = torch.linalg.qr(x)  # orthonormal, centered columns
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * (eigenvalues * (n - 1)).sqrt()) @ basis.t() + 3.0  # an offset: the covariance ignores it


def test_isotropic_gaussian_has_full_dimension_and_no_correlation():
    d = 16
    z = torch.randn(20000, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert participation_ratio(z) == pytest.approx(d, rel=0.02)
    assert effective_rank(z) == pytest.approx(d, rel=0.01)
    # |correlation| of independent columns: E|r| ≈ √(2/(πN)) = 0.0056
    assert mean_abs_correlation(z) == pytest.approx(math.sqrt(2 / (math.pi * 20000)), rel=0.15)
    assert top_variance_fraction(z, 1) == pytest.approx(1 / d, rel=0.1)
    assert abs(powerlaw_exponent(z)) < 0.05


def test_exact_spectra_give_the_closed_forms():
    flat = _with_covariance(torch.ones(8, dtype=torch.float64))
    assert participation_ratio(flat) == pytest.approx(8.0, rel=1e-9)
    assert effective_rank(flat) == pytest.approx(8.0, rel=1e-9)
    rank_one = _with_covariance(torch.tensor([5.0] + [0.0] * 7, dtype=torch.float64))
    assert participation_ratio(rank_one) == pytest.approx(1.0, rel=1e-9)
    assert effective_rank(rank_one) == pytest.approx(1.0, rel=1e-6)
    assert top_variance_fraction(rank_one, 1) == pytest.approx(1.0, rel=1e-9)
    # Rank one: every live column is ± a copy of the others, |correlation| 1.
    assert mean_abs_correlation(rank_one) == pytest.approx(1.0, rel=1e-9)
    # Two equal eigenvalues, the rest zero: participation ratio and effective rank are 2.
    two = _with_covariance(torch.tensor([1.0, 1.0] + [0.0] * 6, dtype=torch.float64))
    assert participation_ratio(two) == pytest.approx(2.0, rel=1e-9)
    assert effective_rank(two) == pytest.approx(2.0, rel=1e-6)
    # A power law λ_i = i^-2: exponent 2, and (Σλ)²/Σλ² by hand.
    lam = torch.arange(1, 17, dtype=torch.float64).pow(-2.0)
    power = _with_covariance(lam, n=800)
    assert powerlaw_exponent(power) == pytest.approx(2.0, rel=1e-6)
    assert participation_ratio(power) == pytest.approx(float(lam.sum() ** 2 / lam.pow(2).sum()), rel=1e-9)
    assert top_variance_fraction(power, 3) == pytest.approx(float(lam[:3].sum() / lam.sum()), rel=1e-9)


def test_dead_and_constant_columns():
    z = torch.randn(100, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z[:, 2] = 7.0  # a dead unit is left out of the correlation, not a NaN
    assert not math.isnan(mean_abs_correlation(z))
    constant = torch.ones(50, 3)
    assert participation_ratio(constant) == 0.0 and effective_rank(constant) == 0.0
    assert math.isnan(mean_abs_correlation(constant))


def test_relative_movement_is_the_noise_to_spread_ratio():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(20000, 32, generator=g, dtype=torch.float64)
    moved = z + 0.1 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    # E‖ε‖ / √(E‖z − z̄‖²) ≈ 0.1·√d / √d
    assert relative_movement(z, moved) == pytest.approx(0.1, rel=0.02)
    assert relative_movement(z, z) == 0.0
    unrelated = torch.randn(z.shape, generator=g, dtype=torch.float64)
    assert relative_movement(z, unrelated) == pytest.approx(math.sqrt(2), rel=0.02)


def test_runs_side_by_side(trained_run, tmp_path):
    options = PropertiesOptions(max_samples=32, random_init=True, device="cpu", output_dir=str(tmp_path / "props"))
    payload = evaluate_properties([trained_run], options, quiet=True)
    trained, random = payload["columns"]
    assert trained["random_init"] is False and random["random_init"] is True
    assert trained["dim"] == 32 and len(trained["spectrum"]) == 32
    for column in payload["columns"]:
        assert 1.0 <= column["participation_ratio"] <= column["dim"] + 1e-6
        assert 0.0 <= column["linear_top1"] <= 1.0 and column["augmentation_movement"] > 0.0
    assert trained["spectrum"] != random["spectrum"]
    written = json.loads((tmp_path / "props" / "properties.json").read_text())
    assert [c["name"] for c in written["columns"]] == ["run", "run (random init)"]
    assert "| compactness: participation ratio (effective dim) |" in (tmp_path / "props" / "properties.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "props" / "properties.png").stat().st_size > 0


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
