"""DINO: self-distillation of a centred, sharpened teacher into the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.losses._precision import float32_loss


@float32_loss
def dino_loss(
    student_logits: Tensor, teacher_logits: Tensor, center: Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04
) -> Tensor:
    """DINO (Caron et al., ICCV 2021, Alg. 1) as ``DINOLoss`` in facebookresearch/dino ``main_dino.py``:

        t_i = softmax((teacher_i − c) / τ_t)          (no gradient)
        s_v = log_softmax(student_v / τ_s)
        L = 1/P Σ_{i < G} Σ_{v ≠ i} mean_b [ −Σ_k t_i[b, k] s_v[b, k] ]

    over the P pairs of a teacher crop ``i`` and a different student crop ``v``: the teacher sees the
    G global crops, which are also the first G student crops. The centre ``c`` is given, not kept:
    the method updates it after the loss (c ← m·c + (1 − m)·mean of the teacher logits).

    Args:
        student_logits: (V, B, K) student head outputs of every crop (global crops first).
        teacher_logits: (G, B, K) teacher head outputs of the global crops.
        center: (K,) or (1, K) centre of the teacher logits.
        student_temp: τ_s (0.1). teacher_temp: τ_t at this epoch (0.04 → 0.07 in the paper).
    """
    num_global, batch = teacher_logits.shape[0], teacher_logits.shape[1]
    num_crops = student_logits.shape[0]
    if student_logits.shape[1:] != teacher_logits.shape[1:]:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ in (B, K)")
    log_student = F.log_softmax(student_logits / student_temp, dim=-1)
    teacher = F.softmax((teacher_logits - center.reshape(1, 1, -1)) / teacher_temp, dim=-1).detach()
    # cross_entropy[i, v] = mean_b −Σ_k t_i[b, k] s_v[b, k]
    cross_entropy = -torch.einsum("gbk,vbk->gv", teacher, log_student) / batch
    same_crop = torch.eye(num_global, num_crops, dtype=torch.bool, device=cross_entropy.device)
    pairs = num_global * num_crops - min(num_global, num_crops)
    if pairs == 0:
        raise ValueError("DINO needs a student crop that differs from the teacher crop")
    return cross_entropy.masked_fill(same_crop, 0.0).sum() / pairs


class DINOLoss(nn.Module):
    """``DINOLoss(student_temp=0.1)(student_logits, teacher_logits, center, teacher_temp)``; see
    :func:`dino_loss`. Holds no centre: that is training state and belongs to the method."""

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
        return dino_loss(student_logits, teacher_logits, center, self.student_temp, teacher_temp)

    def extra_repr(self) -> str:
        return f"student_temp={self.student_temp}"
