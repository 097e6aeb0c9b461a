"""DINO's loss as ``DINOLoss.forward`` in facebookresearch/dino ``main_dino.py`` (METHODS.md §8):
teacher softmax of the centred logits at τ_t (no gradient), student log-softmax at τ_s, averaged
over the pairs (teacher global crop i, student crop v ≠ i). The centre is an input: the loss keeps
no state. Tolerances: values ``rel=1e-5`` against float64 loops; gradients ``rtol=1e-4``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamssl.losses import DINOLoss, dino_loss


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_dino(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, tau_s: float, tau_t: float) -> float:
    """The official loop: chunk student/teacher outputs per crop, skip v == iq, average the terms."""
    student_out = [s / tau_s for s in student]
    teacher_out = [_softmax((t - center) / tau_t) for t in teacher]
    total, terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v, s in enumerate(student_out):
            if v == iq:
                continue
            log_p = np.log(_softmax(s))
            total += np.mean(np.sum(-q * log_p, axis=-1))
            terms += 1
    return total / terms


@pytest.mark.parametrize("num_crops,num_global", [(2, 2), (6, 2), (4, 1), (3, 3)])
def test_dino_loss_matches_reference(num_crops: int, num_global: int) -> None:
    g = torch.Generator().manual_seed(num_crops * 10 + num_global)
    student = torch.randn(num_crops, 5, 12, generator=g, dtype=torch.float64)
    teacher = torch.randn(num_global, 5, 12, generator=g, dtype=torch.float64)
    center = 0.3 * torch.randn(1, 12, generator=g, dtype=torch.float64)
    expected = _ref_dino(student.numpy(), teacher.numpy(), center.numpy(), 0.1, 0.05)
    loss = dino_loss(student, teacher, center, 0.1, 0.05)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert DINOLoss(0.1)(student, teacher, center.flatten(), 0.05).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_reaches_the_student_only_and_matches_autograd_of_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    center = torch.randn(10, generator=g, dtype=torch.float64)
    dino_loss(student, teacher, center, 0.1, 0.04).backward()
    assert teacher.grad is None
    reference_student = student.detach().clone().requires_grad_()
    t = torch.softmax((teacher.detach() - center) / 0.04, dim=-1)
    log_s = torch.log_softmax(reference_student / 0.1, dim=-1)
    pairs = [(i, v) for i in range(2) for v in range(4) if v != i]
    (sum(-(t[i] * log_s[v]).sum(-1).mean() for i, v in pairs) / len(pairs)).backward()
    torch.testing.assert_close(student.grad, reference_student.grad, rtol=1e-4, atol=1e-7)


def test_uniform_student_gives_log_k() -> None:
    """A student that predicts uniformly pays ln K whatever the teacher: DINO's collapse value."""
    loss = dino_loss(torch.zeros(4, 3, 4096), torch.randn(2, 3, 4096), torch.zeros(4096), 0.1, 0.04)
    assert loss.item() == pytest.approx(math.log(4096), rel=1e-6)


def test_center_shifts_the_teacher() -> None:
    """Subtracting a centre equal to the teacher logits makes the teacher uniform: loss = mean
    cross-entropy of a uniform target, i.e. the student's mean −mean_k log p."""
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 3, 7, generator=g)
    teacher = torch.randn(1, 1, 7, generator=g).expand(2, 3, 7).contiguous()
    log_p = torch.log_softmax(student / 0.1, dim=-1)
    expected = -(log_p[1].mean(-1).mean() + log_p[0].mean(-1).mean()) / 2
    assert dino_loss(student, teacher, teacher[0, 0], 0.1, 0.04).item() == pytest.approx(expected.item(), rel=1e-5)
