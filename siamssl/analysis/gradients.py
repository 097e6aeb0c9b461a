"""The unified gradient of Siamese methods (Tao et al., "Exploring the Equivalence of Siamese
Self-Supervised Learning via A Unified Gradient Framework", CVPR 2022), batch by batch.

For a batch of online outputs z (N, D) and the other branch's outputs, every function here returns
the gradient of the library's loss with respect to z, computed by autograd, next to its
closed-form decomposition

    ∂L/∂u_i = c_i ( p_i + λ_i n_i )          p: positive term, n: weighted sum of negatives, λ: balance

on the variable u the loss actually compares (the l2-normalized output for the cosine/contrastive
losses and UniGrad, the batch-standardized output for Barlow Twins, the predictor input itself for
a linear predictor), pushed back through that normalization to z. The families:

* :func:`infonce_gradient` (MoCo): p = −v_i, n = Σ_c s_ic c over the softmax-weighted candidates, λ = 1.
* :func:`simclr_gradient` (with or without stop-gradient on the target branch): p = −v_i (−2v_i),
  n = Σ_b s_ib h_b (+ Σ_a s_ai h_a, the candidate role), λ = 1.
* :func:`linear_predictor_gradient` (BYOL/SimSiam with DirectPred's linear predictor W):
  p = −Wᵀ t̂_i, n = WᵀW f_i (= F̃ f_i, F̃ ≈ F/s_max for DirectPred), λ_i = (p_i·t̂_i)/‖p_i‖².
* :func:`barlow_twins_gradient`: p = −A ẑ2_i with A = I − (1 − λ)diag(C), n = Σ_b (ẑ2_iᵀẑ2_b/N) ẑ1_b, λ.
* :func:`unigrad_gradient`: p = −u2m_i, n = F u1_i, λ.

Typical use: log :meth:`GradientDecomposition.term_norms` during training to watch how the positive
and negative forces balance, or compare methods on the same batch. These functions run on one
process (the library losses are called with ``gather_distributed=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from siamssl.heads.directpred import DirectPredictor
from siamssl.losses import barlow_twins_loss, info_nce, negative_cosine_similarity, normalized_mse, nt_xent, unigrad_loss

Normalization = Literal["none", "l2", "batch"]


@dataclass(frozen=True)
class GradientDecomposition:
    """Autograd gradient of a loss with respect to the online output z and its unified form.

    Attributes:
        gradient: ∂L/∂z by autograd through the library loss, (N, D).
        positive: p, (N, D). negative: n, (N, D).
        balance: λ, a scalar or (N, 1). scale: c, a scalar or (N, 1) (the batch mean's 1/N included).
        online: z, (N, D), where the gradient is taken.
        normalization: how the loss sees z: ``"none"`` (u = z), ``"l2"`` (u = z/‖z‖) or ``"batch"``
            (u = (z − μ)/sqrt(σ² + eps), per dimension over the batch, biased variance).
        eps: the batch standardization's epsilon.
    """

    gradient: Tensor
    positive: Tensor
    negative: Tensor
    balance: Tensor
    scale: Tensor
    online: Tensor
    normalization: Normalization
    eps: float = 0.0

    @property
    def unified(self) -> Tensor:
        """∂L/∂u = c (p + λ n), the gradient on the normalized output."""
        return self.scale * (self.positive + self.balance * self.negative)

    def closed_form(self) -> Tensor:
        """∂L/∂z from :attr:`unified` through the exact Jacobian of the normalization; equals
        :attr:`gradient` up to floating-point error."""
        g, z = self.unified, self.online.to(self.unified.dtype)
        if self.normalization == "none":
            return g
        if self.normalization == "l2":
            norm = z.norm(dim=1, keepdim=True)
            u = z / norm
            return (g - (g * u).sum(dim=1, keepdim=True) * u) / norm
        centered = z - z.mean(dim=0)
        sigma = torch.sqrt(centered.pow(2).mean(dim=0) + self.eps)
        standardized = centered / sigma
        return (g - g.mean(dim=0) - standardized * (g * standardized).mean(dim=0)) / sigma

    def term_norms(self) -> tuple[Tensor, Tensor]:
        """Per-sample norms ‖c p‖ and ‖c λ n‖ of the two forces, each (N,)."""
        return (self.scale * self.positive).norm(dim=1), (self.scale * self.balance * self.negative).norm(dim=1)

    def negative_to_positive_ratio(self) -> float:
        """mean_i ‖λ_i n_i‖ / ‖p_i‖: how strongly the negative term pushes relative to the positive."""
        positive, negative = self.term_norms()
        return float((negative / positive.clamp_min(1e-12)).mean())


def _leaf(z: Tensor) -> Tensor:
    return z.detach().clone().requires_grad_(True)


def _float(x: Tensor, online: Tensor) -> Tensor:
    """Closed forms in float64 when the online output is float64, in float32 otherwise."""
    return x.detach().to(torch.float64 if online.dtype == torch.float64 else torch.float32)


def _scalar(value: float, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def infonce_gradient(online: Tensor, target: Tensor, queue: Optional[Tensor] = None, temperature: float = 0.2) -> GradientDecomposition:
    """MoCo / InfoNCE (:func:`siamssl.losses.info_nce`) with the keys ``target`` from the momentum
    branch (no gradient) and negatives from ``queue`` (MoCo v1/v2) or the other keys (MoCo v3):

        ∂L/∂u_i = 1/(Nτ) ( −v_i + Σ_{c ∈ C_i} s_ic c ),   s_i = softmax_c(u_i·c / τ),

    where C_i = {v_i} ∪ queue, or all keys; the positive itself is one of the weighted candidates.
    """
    q = _leaf(online)
    info_nce(q, target.detach(), None if queue is None else queue.detach(), temperature, gather_distributed=False).backward()
    u, v = F.normalize(_float(online, online), dim=1), F.normalize(_float(target, online), dim=1)
    if queue is None:
        candidates = v
        weights = torch.softmax(u @ v.t() / temperature, dim=1)
        negative = weights @ candidates
    else:
        bank = F.normalize(_float(queue, online), dim=1)
        logits = torch.cat([(u * v).sum(dim=1, keepdim=True), u @ bank.t()], dim=1) / temperature
        weights = torch.softmax(logits, dim=1)
        negative = weights[:, :1] * v + weights[:, 1:] @ bank
    n = u.shape[0]
    return GradientDecomposition(q.grad, -v, negative, _scalar(1.0, u), _scalar(1.0 / (n * temperature), u), online.detach(), "l2")


def simclr_gradient(online: Tensor, other: Tensor, temperature: float = 0.5, stop_gradient: bool = False) -> GradientDecomposition:
    """SimCLR / NT-Xent (:func:`siamssl.losses.nt_xent`, mean over the 2N anchors), gradient on the
    first view's projections ``online``; ``other`` is the second view. With h the 2N normalized rows
    and s_ab = softmax_{b≠a}(h_a·h_b/τ):

    * ``stop_gradient=False`` (SimCLR): u_i enters as an anchor and as a candidate of every other
      anchor, ∂L/∂u_i = 1/(2Nτ) ( −2 v_i + Σ_b (s_ib + s_bi) h_b ). Detaching ``other`` changes
      nothing here: the rows of the first view are candidates of one another.
    * ``stop_gradient=True``: the gradient through every candidate (the "target branch") is stopped,
      leaving the anchor part, ∂L/∂u_i = 1/(2Nτ) ( −v_i + Σ_b s_ib h_b ), which Tao et al. (Sec. 3.1)
      find trains as well. Autograd side: :func:`siamssl.losses.info_nce` per anchor with its
      positive and its 2N − 2 negatives detached.
    """
    n = online.shape[0]
    h = F.normalize(torch.cat([_float(online, online), _float(other, online)]), dim=1)
    logits = h @ h.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    weights = torch.softmax(logits, dim=1)
    positives = h[n:]
    q = _leaf(online)
    if stop_gradient:
        everything = torch.cat([online, other]).detach()
        loss = q.new_zeros(())
        for i in range(n):
            negatives = everything[[b for b in range(2 * n) if b not in (i, n + i)]]
            loss = loss + info_nce(q[i : i + 1], other[i : i + 1].detach(), negatives, temperature, gather_distributed=False)
        (loss / (2 * n)).backward()
        positive, negative = -positives, weights[:n] @ h
    else:
        nt_xent(q, other.detach(), temperature, gather_distributed=False).backward()
        positive, negative = -2.0 * positives, (weights[:n] + weights[:, :n].t()) @ h
    return GradientDecomposition(q.grad, positive, negative, _scalar(1.0, h), _scalar(1.0 / (2 * n * temperature), h), online.detach(), "l2")


def linear_predictor_gradient(
    online: Tensor,
    target: Tensor,
    weight: Union[Tensor, DirectPredictor],
    loss: Literal["negative_cosine", "normalized_mse"] = "negative_cosine",
) -> GradientDecomposition:
    """BYOL/SimSiam with a linear predictor p = W f (DirectPred), one direction D(W f, sg(t)), gradient
    on the predictor input f = ``online``. With t̂ = t/‖t‖:

        ∂L/∂f_i = k/(N‖p_i‖) ( −Wᵀ t̂_i + λ_i WᵀW f_i ),   λ_i = (p_i·t̂_i) / ‖p_i‖²,

    k = 1 for SimSiam's negative cosine and 2 for BYOL's 2 − 2cos. The negative term is F̃ f with
    F̃ = WᵀW: for DirectPred's W = U diag(p) Uᵀ, F̃ = U diag(p²) Uᵀ = F/s_max + 2ε(F/s_max)^{1/2} + ε²I
    (where no clamp applies), the "λ F z1" of Tao et al. (their code keeps F/s_max + ε²I). The
    correlation F of the predictor inputs thus plays the role of the negatives, with a sample-wise
    balance.

    Args:
        weight: W (D_out, D_in) or a :class:`~siamssl.heads.DirectPredictor` (its current W).
    """
    w_live = weight.weight if isinstance(weight, DirectPredictor) else weight
    w_live = w_live.detach()
    criterion = negative_cosine_similarity if loss == "negative_cosine" else normalized_mse
    q = _leaf(online)
    criterion(q @ w_live.t().to(q.dtype), target.detach()).backward()
    f, w = _float(online, online), _float(w_live, online)
    p = f @ w.t()
    t_hat = F.normalize(_float(target, online), dim=1)
    p_norm2 = p.pow(2).sum(dim=1, keepdim=True)
    balance = (p * t_hat).sum(dim=1, keepdim=True) / p_norm2
    k = 1.0 if loss == "negative_cosine" else 2.0
    scale = k / (f.shape[0] * p_norm2.sqrt())
    return GradientDecomposition(q.grad, -t_hat @ w, f @ (w.t() @ w).t(), balance, scale, online.detach(), "none")


def barlow_twins_gradient(online: Tensor, target: Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> GradientDecomposition:
    """Barlow Twins (:func:`siamssl.losses.barlow_twins_loss`), gradient on the first view. With q = ẑ1
    and k = ẑ2 the batch-standardized outputs and C = qᵀk/N:

        ∂L/∂q_i = 2/N ( −A k_i + λ Σ_b (k_iᵀ k_b / N) q_b ),   A = I − (1 − λ) diag(C),

    the positive term, and a sum over the batch weighted by the similarity of the targets (Tao et
    al., Sec. 3.3; A → I is their simplification). Then the exact Jacobian of the standardization.
    """
    q_leaf = _leaf(online)
    barlow_twins_loss(q_leaf, target.detach(), lambd, eps, gather_distributed=False).backward()

    def standardize(z: Tensor) -> Tensor:
        centered = z - z.mean(dim=0)
        return centered / torch.sqrt(centered.pow(2).mean(dim=0) + eps)

    q, k = standardize(_float(online, online)), standardize(_float(target, online))
    n = q.shape[0]
    c = q.t() @ k / n
    a = 1.0 - (1.0 - lambd) * torch.diagonal(c)
    return GradientDecomposition(
        q_leaf.grad, -k * a, (k @ k.t() / n) @ q, _scalar(lambd, q), _scalar(2.0 / n, q), online.detach(), "batch", eps
    )


def unigrad_gradient(online: Tensor, target: Tensor, correlation: Tensor, lambd: float = 100.0) -> GradientDecomposition:
    """UniGrad (:func:`siamssl.losses.unigrad_loss`): gradient of the symmetric surrogate on the first
    view's online projection ``online``, with ``target`` the second view's momentum projection:

        ∂L/∂u1_i = 1/(2N) ( −u2m_i + λ F u1_i ),

    exactly the prescribed gradient: the surrogate ⟨sg(g), u⟩ injects it, which this checks.
    """
    q = _leaf(online)
    unigrad_loss(q, online.detach(), target.detach(), target.detach(), correlation, lambd).backward()
    u, um = F.normalize(_float(online, online), dim=1), F.normalize(_float(target, online), dim=1)
    negative = u @ _float(correlation, online)  # F u row-wise (F is symmetric), as the loss computes it
    return GradientDecomposition(q.grad, -um, negative, _scalar(lambd, u), _scalar(1.0 / (2 * u.shape[0]), u), online.detach(), "l2")
