"""Diagnostics on matrices whose answers are known in closed form."""

import math

import numpy as np
import pytest
import torch

from siamssl.eval.diagnostics import (
    alignment,
    covariance_spectrum,
    normalized_channel_std,
    numerical_rank,
    rankme,
    summarize,
    uniformity,
)


def orthonormal_columns(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def matrix_with_singular_values(n: int, d: int, singular_values: list[float], seed: int = 0) -> torch.Tensor:
    r = len(singular_values)
    u, v = orthonormal_columns(n, r, seed), orthonormal_columns(d, r, seed + 1)
    return u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.t()


# ------------------------------------------------------------------------------------- std


def test_std_of_a_collapsed_batch_is_zero():
    direction = torch.randn(16, dtype=torch.float64)
    scales = torch.rand(32, 1, dtype=torch.float64) + 0.5  # same direction, different norms
    assert normalized_channel_std(scales * direction).abs().max() < 1e-12


def test_std_of_the_signed_basis_in_closed_form():
    # rows ±e_i: each channel is ±1 on two of the 2d rows and 0 elsewhere -> unbiased var 2/(2d-1)
    d = 8
    z = torch.cat([torch.eye(d, dtype=torch.float64), -torch.eye(d, dtype=torch.float64)])
    expected = math.sqrt(2.0 / (2 * d - 1))
    assert torch.allclose(normalized_channel_std(z), torch.full((d,), expected, dtype=torch.float64), atol=1e-12)


def test_std_of_isotropic_gaussian_is_one_over_sqrt_d():
    d = 64
    z = torch.randn(20000, d, generator=torch.Generator().manual_seed(0))
    assert normalized_channel_std(z).mean().item() == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert summarize(z[:2000])["std_x_sqrt_d"] == pytest.approx(1.0, rel=0.03)


# ------------------------------------------------------------------------------------ rank


@pytest.mark.parametrize("r", [1, 3, 10])
def test_rankme_of_r_equal_singular_values_is_r(r):
    z = matrix_with_singular_values(50, 20, [2.5] * r)
    assert rankme(z) == pytest.approx(r, rel=1e-4)
    assert numerical_rank(z) == r


def test_rankme_of_a_generic_rank_r_matrix_is_at_most_r():
    g = torch.Generator().manual_seed(0)
    r = 5
    z = torch.randn(100, r, generator=g, dtype=torch.float64) @ torch.randn(r, 32, generator=g, dtype=torch.float64)
    assert numerical_rank(z) == r
    assert 1.0 < rankme(z) <= r + 1e-4
    assert rankme(7.0 * z) == pytest.approx(rankme(z), rel=1e-9)  # scale invariant


def test_rankme_matches_its_definition():
    z = matrix_with_singular_values(40, 12, [5.0, 3.0, 1.0, 0.5])
    sigma = np.linalg.svd(z.numpy(), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    assert rankme(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)


# ------------------------------------------------------------------------ alignment/uniformity


def test_alignment_closed_forms():
    x = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert alignment(x, 3.0 * x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, -x) == pytest.approx(4.0)  # antipodal: |x - y| = 2
    assert alignment(x, -x, alpha=1.0) == pytest.approx(2.0)
    theta = 0.7  # rotate every row by theta in the plane of the first two axes
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    rotated = torch.tensor([[math.cos(theta), math.sin(theta), 0.0], [-math.sin(theta), math.cos(theta), 0.0]], dtype=torch.float64)
    assert alignment(rows, rotated) == pytest.approx(2.0 - 2.0 * math.cos(theta))


def test_uniformity_closed_forms():
    same = torch.ones(5, 3, dtype=torch.float64)
    assert uniformity(same) == pytest.approx(0.0, abs=1e-12)  # collapse: the maximum
    n, t = 6, 2.0  # a regular simplex: every pairwise squared distance is 2n/(n-1)
    simplex = torch.eye(n, dtype=torch.float64) - 1.0 / n
    assert uniformity(simplex, t) == pytest.approx(-t * 2 * n / (n - 1))


def test_uniformity_matches_pdist_reference_in_chunks():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    unit = torch.nn.functional.normalize(x, dim=1)
    reference = torch.pdist(unit, p=2).pow(2).mul(-2.0).exp().mean().log()  # Wang & Isola's uniform_loss
    assert uniformity(x, 2.0, chunk_size=64) == pytest.approx(float(reference), abs=1e-10)


# -------------------------------------------------------------------------------- spectrum


def test_covariance_spectrum_known_eigenvalues():
    n, d = 200, 8
    u = orthonormal_columns(n, d + 1, 0)
    ones = torch.ones(n, 1, dtype=torch.float64) / math.sqrt(n)
    # columns orthogonal to the all-ones vector: already centered
    u = u - ones @ (ones.t() @ u)
    u, _ = torch.linalg.qr(u[:, :d])
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    v = orthonormal_columns(d, d, 2)
    z = u @ torch.diag(s) @ v.t()
    spectrum = covariance_spectrum(z, normalize=False)
    assert torch.allclose(spectrum, s**2 / (n - 1), atol=1e-10)
    assert (spectrum[5:] < 1e-10).all()  # the collapsed dimensions
    numpy_eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(z.numpy(), rowvar=False)))[::-1]
    assert np.allclose(spectrum.numpy(), numpy_eigenvalues, atol=1e-10)


def test_spectrum_of_a_collapsed_batch_is_zero():
    z = torch.randn(1, 10, dtype=torch.float64).repeat(50, 1) * (torch.rand(50, 1, dtype=torch.float64) + 0.5)
    assert covariance_spectrum(z).max() < 1e-12
