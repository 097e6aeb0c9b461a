"""CPC's InfoNCE over a patch grid: a float64 loop over predictions of the paper's formula, the
targets k rows ahead in the same column of the same image, and negatives from the other images.

The library computes in float32; values are compared with ``rtol=1e-5, atol=1e-5`` against float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import CPCLoss, cpc_loss


def _grid(k: int, b: int, h: int, w: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randn(b, h, w, d, generator=g, dtype=torch.float64)
    predictions = 0.5 * torch.randn(k, b, h, w, d, generator=g, dtype=torch.float64)
    return predictions, targets


def _reference(predictions: np.ndarray, targets: np.ndarray, offsets: list[int]) -> float:
    """Σ_k mean over (b, i < H−k, j) of −log softmax over every patch l of the batch, at (b, i+k, j)."""
    b_count, h, w, _ = targets.shape
    patches = [(b, i, j) for b in range(b_count) for i in range(h) for j in range(w)]
    total = 0.0
    for n, k in enumerate(offsets):
        terms = []
        for b in range(b_count):
            for i in range(h - k):
                for j in range(w):
                    scores = {p: float(predictions[n, b, i, j] @ targets[p]) for p in patches}
                    top = max(scores.values())
                    log_sum = top + math.log(sum(math.exp(s - top) for s in scores.values()))
                    terms.append(log_sum - scores[(b, i + k, j)])
        total += sum(terms) / len(terms)
    return total


@pytest.mark.parametrize("b,h,w,d,offsets", [(1, 2, 1, 3, [1]), (2, 3, 3, 4, [1, 2]), (3, 5, 4, 8, [2, 3, 4])])
def test_matches_the_float64_reference(b, h, w, d, offsets):
    predictions, targets = _grid(len(offsets), b, h, w, d, seed=b * 100 + h)
    value = cpc_loss(predictions, targets, offsets)
    assert value.dtype == torch.float32
    expected = _reference(predictions.numpy(), targets.numpy(), offsets)
    torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(CPCLoss(offsets)(predictions, targets), value)


def test_the_target_is_k_rows_below_in_the_same_column_of_the_same_image():
    """Predictions equal to a scaled copy of one patch's target make the loss ~0 only when that patch
    is (b, i + k, j); the same copy shifted by any other row, column or image is a high loss."""
    b, h, w, d, k = 2, 4, 3, 24, 2
    targets = torch.nn.functional.normalize(torch.randn(b, h, w, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    right = torch.zeros(1, b, h, w, d)
    right[0, :, : h - k] = 30.0 * targets[:, k:]
    assert cpc_loss(right, targets, [k]) < 0.05
    for wrong_target in (targets[:, k - 1 : h - 1], targets.roll(1, dims=2)[:, k:], targets.roll(1, dims=0)[:, k:]):
        wrong = torch.zeros(1, b, h, w, d)
        wrong[0, :, : h - k] = 30.0 * wrong_target
        assert cpc_loss(wrong, targets, [k]) > 5.0


def test_negatives_include_the_other_images():
    """Image 1's predictions are zero (every candidate scores alike: no gradient, loss log(B·H·W)).
    Image 0's softmax then still reaches image 1's targets, and its loss is higher than alone."""
    predictions, targets = _grid(1, 2, 3, 2, 4, seed=7)
    predictions[:, 1] = 0.0
    targets.requires_grad_(True)
    together = cpc_loss(predictions, targets, [1])
    together.backward()
    assert targets.grad[1].abs().sum() > 1e-3
    alone = cpc_loss(predictions[:, :1], targets[:1].detach(), [1])
    first_image_with_both = 2 * float(together.detach()) - math.log(2 * 3 * 2)  # both images hold 2×2 predictions
    assert first_image_with_both > float(alone) + 1e-4


def test_bad_shapes_and_offsets_fail_with_one_line():
    predictions, targets = _grid(1, 2, 3, 3, 4, seed=1)
    with pytest.raises(ValueError, match="offsets"):
        cpc_loss(predictions, targets, [3])
    with pytest.raises(ValueError, match="offsets"):
        cpc_loss(predictions, targets, [1, 2])
    with pytest.raises(ValueError, match="predictions must be"):
        cpc_loss(predictions[0], targets, [1])
