"""DirectPred's predictor (Tian et al., ICML 2021): W = U diag(sqrt(s/s_max) + ε) Uᵀ from the moving
average F̂ of the uncentred correlation of its inputs, updated every ``freq`` steps."""

import math

import pytest
import torch

from siamssl.heads import DirectPredictor, DirectPredOptions, directpred_weight, input_correlation


def _correlation_with_spectrum(eigenvalues: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """F = Q diag(s) Qᵀ with a random orthogonal Q (float64); returns (F, Q)."""
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.t(), q


@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_weight_has_the_eigenvectors_of_f_and_eigenvalues_sqrt_s_over_smax_plus_eps(eps):
    s = [4.0, 2.5, 1.0, 0.36, 0.04, 0.0, -0.2]  # a slightly negative eigenvalue is clamped to 0
    f, q = _correlation_with_spectrum(s, seed=1)
    w = directpred_weight(f.float(), eps).double()
    expected_p = torch.tensor([math.sqrt(max(v, 0.0) / 4.0) + eps for v in s], dtype=torch.float64)
    torch.testing.assert_close(w, w.t(), rtol=0, atol=1e-6)
    # Each column of Q is an eigenvector of W with eigenvalue p_j.
    torch.testing.assert_close(w @ q, q * expected_p, rtol=0, atol=2e-6)
    torch.testing.assert_close(torch.linalg.eigvalsh(w), expected_p.sort().values, rtol=0, atol=2e-6)


def test_eigenvalues_are_clamped_at_1e4_and_scale_of_f_does_not_matter():
    f, q = _correlation_with_spectrum([1.0, 0.25, 0.0], seed=2)
    w = directpred_weight(f.float(), eps=-0.6).double()  # sqrt(s/s_max) - 0.6 = 0.4, -0.1 -> 1e-4, -0.6 -> 1e-4
    torch.testing.assert_close(w @ q, q * torch.tensor([0.4, 1e-4, 1e-4], dtype=torch.float64), rtol=0, atol=2e-6)
    torch.testing.assert_close(directpred_weight(37.0 * f.float(), 0.01), directpred_weight(f.float(), 0.01), rtol=0, atol=2e-6)


def test_eigendecomposition_runs_in_float32_for_low_precision_inputs():
    f, _ = _correlation_with_spectrum([3.0, 1.0, 0.5, 0.1], seed=3)
    w = directpred_weight(f.to(torch.bfloat16), 0.01)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, directpred_weight(f.to(torch.bfloat16).float(), 0.01), rtol=0, atol=0)


def test_observe_keeps_a_moving_average_started_at_the_first_batch():
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 5, generator=g) + 0.5, torch.randn(6, 5, generator=g)) for _ in range(3)]
    rho = 0.3
    head = DirectPredictor(5, DirectPredOptions(rho=rho))
    expected = None
    for z1, z2 in batches:
        head.observe(z1, z2)
        f = torch.cat([z1, z2])
        batch = f.t() @ f / 12  # uncentred, both views, mean over 2N rows
        expected = batch if expected is None else rho * expected + (1 - rho) * batch
        torch.testing.assert_close(head.correlation, expected, rtol=1e-6, atol=1e-6)
    assert int(head.num_observed) == 3
    torch.testing.assert_close(input_correlation(*batches[0]), torch.cat(batches[0]).t() @ torch.cat(batches[0]) / 12)


def test_observe_ignores_gradients_and_forward_is_the_linear_map():
    head = DirectPredictor(4)
    z = torch.randn(3, 4, requires_grad=True)
    head.observe(z, z)
    assert not head.correlation.requires_grad
    torch.testing.assert_close(head(z), z @ head.weight.t())
    assert list(head.parameters()) == []  # never trained by gradient


def test_update_every_freq_steps_and_not_before_the_first_observation():
    head = DirectPredictor(4, DirectPredOptions(rho=0.5, eps=0.01, freq=3))
    initial = head.weight.clone()
    head.update()  # nothing observed yet: W stays nn.Linear's random init
    assert torch.equal(head.weight, initial)

    head = DirectPredictor(4, DirectPredOptions(rho=0.5, eps=0.01, freq=3))
    g = torch.Generator().manual_seed(5)
    changed = []
    for _ in range(7):
        head.observe(torch.randn(8, 4, generator=g))
        before = head.weight.clone()
        head.update()
        changed.append(not torch.equal(before, head.weight))
        if changed[-1]:
            torch.testing.assert_close(head.weight, directpred_weight(head.correlation, 0.01), rtol=0, atol=0)
    assert changed == [True, False, False, True, False, False, True]


def test_state_dict_holds_everything_needed_to_resume():
    g = torch.Generator().manual_seed(6)
    data = [torch.randn(8, 4, generator=g) for _ in range(6)]
    options = DirectPredOptions(rho=0.7, eps=0.05, freq=2)
    straight = DirectPredictor(4, options)
    for x in data:
        straight.observe(x)
        straight.update()
    first_half = DirectPredictor(4, options)
    for x in data[:3]:
        first_half.observe(x)
        first_half.update()
    resumed = DirectPredictor(4, options)
    resumed.load_state_dict(first_half.state_dict())
    for x in data[3:]:
        resumed.observe(x)
        resumed.update()
    assert set(straight.state_dict()) == {"weight", "correlation", "num_observed", "num_updates"}
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("options", [dict(rho=1.0), dict(rho=-0.1), dict(freq=0)])
def test_invalid_options_are_rejected(options):
    with pytest.raises(ValueError):
        DirectPredOptions(**options)
