"""Non-parametric softmax over a memory bank, exact or approximated by NCE (InstDisc, CMC).

Every function takes the anchors ``features`` (B, D) and a memory ``bank`` (N, D) holding one
l2-normalized vector per training sample; the anchors are l2-normalized here, the bank is used as
given (its rows are kept normalized by the method that owns it). Nothing is stored: the bank, the
candidate indices and the NCE normalization constant ``Z`` are all passed in, and the bank receives
no gradient. Row ``i`` of ``candidates`` (B, 1 + K) holds the index of anchor ``i``'s own entry
(column 0, the positive) followed by ``K`` noise indices.

* :func:`full_softmax_loss`: ``P(i | v) = exp(v_i·v/τ) / Σ_j exp(v_j·v/τ)`` over the whole bank
  (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018,
  Eq. 2; zhirongw/lemniscate.pytorch ``LinearAverage`` + ``CrossEntropyLoss``, ``--nce-k 0``).
* :func:`nce_loss`: noise-contrastive estimation of that softmax with ``K`` uniform noise samples
  and a constant ``Z`` (Wu et al., Eqs. 4-7; lemniscate ``NCEAverage``/``NCECriterion``; Tian et al.,
  "Contrastive Multiview Coding", ECCV 2020, Eq. 12; HobbitLong/CMC ``NCE/``). :func:`nce_normalizer`
  gives the estimate of ``Z`` that the official code takes once, from the first batch.
* :func:`sampled_softmax_loss`: cross-entropy over the positive and the ``K`` noise entries only
  (HobbitLong/CMC ``--softmax``, which its README reports slightly better than NCE).
* :func:`proximal_penalty`: ``‖v_i^(t) − v_i^(t−1)‖²``, the proximal regularization of Wu et al. §3.3.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.losses._precision import float32_loss

NCE_EPS = 1e-7  # the official NCECriterion's guard in both ratios


def _candidate_logits(features: Tensor, bank: Tensor, candidates: Tensor, temperature: float) -> Tensor:
    """``s_ij = u_i · bank[candidates_ij] / τ`` (B, 1 + K) with ``u = features/‖features‖``."""
    u = F.normalize(features, dim=1)
    rows = bank.detach()[candidates]  # (B, 1 + K, D)
    return torch.bmm(rows, u.unsqueeze(2)).squeeze(2) / temperature


@float32_loss
def full_softmax_loss(features: Tensor, bank: Tensor, index: Tensor, temperature: float = 0.07) -> Tensor:
    """``-mean_i log( exp(u_i·bank[index_i]/τ) / Σ_{j<N} exp(u_i·bank[j]/τ) )``: the exact
    non-parametric softmax (Wu et al., Eq. 2) with ``u = features/‖features‖``.

    Args:
        features: anchors (B, D). bank: memory (N, D). index: (B,) each anchor's own bank row.
        temperature: τ (the paper: 0.07; lemniscate's CIFAR script: 0.1).
    """
    logits = F.normalize(features, dim=1) @ bank.detach().t() / temperature
    return F.cross_entropy(logits, index)


@float32_loss
def sampled_softmax_loss(features: Tensor, bank: Tensor, candidates: Tensor, temperature: float = 0.07) -> Tensor:
    """``-mean_i log( exp(s_i0) / Σ_{j≤K} exp(s_ij) )`` with ``s_ij = u_i·bank[candidates_ij]/τ``:
    softmax cross-entropy over the positive (column 0) and the K noise entries (HobbitLong/CMC
    ``NCESoftmaxLoss``)."""
    logits = _candidate_logits(features, bank, candidates, temperature)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


@float32_loss
def nce_normalizer(features: Tensor, bank: Tensor, candidates: Tensor, temperature: float = 0.07) -> Tensor:
    """``Ẑ = N · mean_{i,j} exp(s_ij)``: the Monte-Carlo estimate of the softmax denominator
    ``Z_i = Σ_j exp(v_j·u_i/τ)`` over the candidates of a batch (Wu et al., Eq. 7). The official code
    computes it once, on the first batch, and keeps it fixed. Returned without gradient."""
    with torch.no_grad():
        return _candidate_logits(features, bank, candidates, temperature).exp().mean() * bank.shape[0]


@float32_loss
def nce_loss(
    features: Tensor,
    bank: Tensor,
    candidates: Tensor,
    normalizer: Union[Tensor, float],
    temperature: float = 0.07,
    eps: float = NCE_EPS,
) -> Tensor:
    """NCE of the non-parametric softmax with uniform noise ``P_n = 1/N`` (Wu et al., Eqs. 4-6)::

        P_ij = exp(s_ij) / Z,   s_ij = u_i·bank[candidates_ij] / τ
        h(P) = P / (P + K·P_n)
        L = -1/B Σ_i [ log h(P_i0) + Σ_{j=1..K} log(1 − h(P_ij)) ]

    with ``eps`` added to both denominators as in the official ``NCECriterion`` (lemniscate and CMC).
    The noise indices are drawn uniformly over the bank by the caller (they may hit the positive,
    as in the official alias sampler).

    Args:
        features: anchors (B, D). bank: memory (N, D).
        candidates: (B, 1 + K) long; column 0 the positive, then the K noise indices.
        normalizer: the constant ``Z`` (see :func:`nce_normalizer`); it receives no gradient.
        temperature: τ. eps: the official criterion's 1e-7.
    """
    num_noise = candidates.shape[1] - 1
    if num_noise < 1:
        raise ValueError("nce_loss needs at least one noise sample per anchor (candidates of shape (B, 1 + K), K >= 1)")
    z = normalizer.detach() if isinstance(normalizer, Tensor) else normalizer
    probs = _candidate_logits(features, bank, candidates, temperature).exp() / z
    noise_mass = num_noise / bank.shape[0]  # K · P_n
    log_h_positive = torch.log(probs[:, 0] / (probs[:, 0] + noise_mass + eps))
    log_one_minus_h_noise = torch.log(noise_mass / (probs[:, 1:] + noise_mass + eps))
    return -(log_h_positive.sum() + log_one_minus_h_noise.sum()) / probs.shape[0]


@float32_loss
def proximal_penalty(features: Tensor, previous: Tensor) -> Tensor:
    """``mean_i ‖features_i − previous_i‖²`` (Wu et al. §3.3, ``λ‖v_i^(t) − v_i^(t−1)‖²`` before the
    weight λ): ``previous`` is the bank entry of the same sample from its last visit, without gradient.
    Inputs are used as given (the features are already l2-normalized by the method)."""
    return (features - previous.detach()).pow(2).sum(dim=1).mean()


class NCELoss(nn.Module):
    """``NCELoss(temperature)(features, bank, candidates, normalizer)``; see :func:`nce_loss`."""

    def __init__(self, temperature: float = 0.07, eps: float = NCE_EPS) -> None:
        super().__init__()
        self.temperature = temperature
        self.eps = eps

    def forward(self, features: Tensor, bank: Tensor, candidates: Tensor, normalizer: Union[Tensor, float]) -> Tensor:
        return nce_loss(features, bank, candidates, normalizer, self.temperature, self.eps)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class NonParametricSoftmaxLoss(nn.Module):
    """``NonParametricSoftmaxLoss(temperature)(features, bank, index)``; see :func:`full_softmax_loss`."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, features: Tensor, bank: Tensor, index: Tensor) -> Tensor:
        return full_softmax_loss(features, bank, index, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
