"""DirectPred: a linear predictor set from the correlation of its inputs instead of trained.

Tian, Chen & Ganguli, "Understanding Self-Supervised Learning Dynamics without Contrastive Pairs",
ICML 2021, Eq. 18-19; official code facebookresearch/luckmatters ``ssl/real-dataset/byol_trainer.py``
(``Accumulator``, ``regulate_predictor`` with ``predictor_reg=corr``, ``compute_w_corr`` with
``balance_type=boost_scale``, ``dyn_convert=2``, ``dyn_eps_inside=false``).

With f the predictor inputs (the online projector outputs of both views, detached, uncentred):

    F̂ ← ρ F̂ + (1 − ρ) mean_i f_i f_iᵀ            (F̂ starts at the first batch's value)
    F̂ = U diag(s) Uᵀ,   p_j = sqrt(max(s_j, 0) / s_max) + ε,  clamped at 1e-4,   W = U diag(p) Uᵀ

W is recomputed every ``freq`` steps after the optimizer step and is never trained by gradient. The
paper writes p_j = sqrt(s_j) + ε·max_j sqrt(s_j); the code's form differs by the global factor
1/sqrt(s_max), which the cosine losses of SimSiam and BYOL ignore.

The official STL-10/CIFAR-10 setting is ρ = 0.3, ε = 0.01, every step (the defaults here); the
UniGrad ImageNet port (fundamentalvision/UniGrad ``configs/byol_directpred_grad.py``) uses ρ = 0.99,
ε = 0.3. Under torch.distributed the batch correlation is averaged over ranks, so every rank holds
the same F̂ and W (equal local batch sizes assumed, as everywhere in siamssl).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import all_reduce_mean


@dataclass
class DirectPredOptions:
    """DirectPred's options (defaults: the official STL-10/CIFAR-10 command, luckmatters README).

    rho: ρ of the moving average F̂ ← ρF̂ + (1−ρ)F_batch (``dyn_lambda``; 0.99 in the UniGrad port).
    eps: ε added to sqrt(s/s_max) (``dyn_eps``; 0.3 in the UniGrad port).
    freq: recompute W every ``freq`` optimizer steps (``predictor_freq``; the paper finds 5 almost as good).
    """

    rho: float = 0.3
    eps: float = 0.01
    freq: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"directpred rho must be in [0, 1), got {self.rho}")
        if self.freq < 1:
            raise ValueError(f"directpred freq must be >= 1, got {self.freq}")


def input_correlation(*inputs: Tensor) -> Tensor:
    """Uncentred correlation ``mean_i f_i f_iᵀ`` over the rows of all ``inputs`` (float32, no gradient)."""
    f = torch.cat([x.detach().float() for x in inputs], dim=0)
    return f.t() @ f / f.shape[0]


def directpred_weight(correlation: Tensor, eps: float) -> Tensor:
    """``W = U diag(p) Uᵀ`` with ``p_j = sqrt(max(s_j, 0)/s_max) + ε`` (≥ 1e-4), ``F = U diag(s) Uᵀ``.

    The eigendecomposition runs in float32 (``eigh``: F is symmetric) whatever the input precision.
    On CUDA, ``torch.linalg.eigh`` reads the solver's status on the host (one synchronization per
    call, inherent to torch's linalg); ``DirectPredOptions.freq`` > 1 makes it rarer.
    """
    s, u = torch.linalg.eigh(correlation.float())
    s = s.clamp_min(0.0)
    s_max = s.max().clamp_min(torch.finfo(s.dtype).tiny)
    p = (torch.sqrt(s / s_max) + eps).clamp_min(1e-4)
    return (u * p) @ u.t()


class DirectPredictor(nn.Module):
    """A bias-free linear predictor ``x ↦ W x`` whose W is set by :func:`directpred_weight`.

    Call :meth:`observe` with the predictor inputs of a training step (both views) and
    :meth:`update` after the optimizer step. W, F̂ and the counters are buffers: checkpoints hold
    them and a resumed run continues exactly. Before the first update W is nn.Linear's random
    initialization, as in the official code.
    """

    weight: Tensor
    correlation: Tensor
    num_observed: Tensor
    num_updates: Tensor

    def __init__(self, dim: int, options: DirectPredOptions = DirectPredOptions()) -> None:
        super().__init__()
        self.dim = dim
        self.options = options
        weight = torch.empty(dim, dim)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's default
        self.register_buffer("weight", weight)
        self.register_buffer("correlation", torch.zeros(dim, dim))
        self.register_buffer("num_observed", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # A host copy of ``num_updates``, so that choosing the update steps reads nothing from the
        # device; forgotten when a state dict is loaded (the loaded buffer is then read once).
        self._host_updates: Optional[int] = 0
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host_updates", None))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))

    @torch.no_grad()
    def observe(self, *inputs: Tensor) -> None:
        """Fold the batch correlation of ``inputs`` (all views' predictor inputs) into F̂."""
        batch = all_reduce_mean(input_correlation(*inputs))
        averaged = torch.lerp(self.correlation, batch, 1.0 - self.options.rho)
        # torch.where rather than a Python test on the counter: no host synchronization.
        self.correlation.copy_(torch.where(self.num_observed == 0, batch, averaged))
        self.num_observed += 1

    @torch.no_grad()
    def update(self) -> None:
        """Recompute W from F̂ on every ``freq``-th call (the first call included); W is left as it
        is while nothing has been observed."""
        freq = self.options.freq
        if self._host_updates is None:  # after construction or a loaded state dict: read once
            self._host_updates = int(self.num_updates)
        if self._host_updates % freq == 0:
            weight = directpred_weight(self.correlation, self.options.eps)
            self.weight.copy_(torch.where(self.num_observed > 0, weight, self.weight))
        self.num_updates += 1
        self._host_updates += 1

    def extra_repr(self) -> str:
        o = self.options
        return f"dim={self.dim}, rho={o.rho}, eps={o.eps}, freq={o.freq}"
