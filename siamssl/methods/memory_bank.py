"""The memory bank of InstDisc and CMC: one l2-normalized feature per training sample, moved
towards each sample's new feature after every step it is in, plus the state its NCE needs.

Distributed runs stay exact and every rank's bank identical: updates use the indices and features
gathered over ranks, the NCE constant ``Z`` is averaged over ranks when it is estimated, and the
noise of a step is drawn for the global batch from a generator seeded by ``(seed, step)`` with each
rank keeping its own rows, so one process on 2B samples and two on B draw the same noise per sample.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.distributed import all_reduce_mean, gather_no_grad, local_row_offset, world_size
from siamssl.errors import ConfigError
from siamssl.losses import full_softmax_loss, nce_loss, nce_normalizer, sampled_softmax_loss

BankLoss = Literal["nce", "sampled_softmax", "full_softmax"]


class MemoryBank(nn.Module):
    """``features`` (num_samples, dim): the bank, a buffer. ``nce_normalizer``: the NCE constant ``Z``
    of anchors contrasted against this bank (−1 until estimated), a buffer. ``noise_seed``: seeds the
    noise draws; kept in the state dict as extra state.

    The bank starts as the official code's uniform draw in ``±√(3/dim)`` (rows of norm ≈ 1),
    l2-normalized so that every entry is a unit vector from the first step.
    """

    def __init__(self, num_samples: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        bound = math.sqrt(3.0 / dim)
        self.register_buffer("features", F.normalize(torch.rand(num_samples, dim) * 2 * bound - bound, dim=1))
        self.register_buffer("nce_normalizer", torch.tensor(-1.0))
        self.momentum = momentum
        self.noise_seed = int(torch.randint(2**31 - 1, ()).item())
        # Host-side flag, so the steady state reads no device value: reset whenever a state dict is
        # loaded (the loaded buffer then wins over the one re-estimate, see ``normalizer``).
        self._normalizer_set = False
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_normalizer_set", False))

    @property
    def num_samples(self) -> int:
        return self.features.shape[0]

    def get_extra_state(self) -> Any:
        return {"noise_seed": self.noise_seed}

    def set_extra_state(self, state: Any) -> None:
        self.noise_seed = int(state["noise_seed"])

    def draw_candidates(self, index: Tensor, num_negatives: int, step: int) -> Tensor:
        """(B, 1 + K) long: column 0 ``index`` (each anchor's own entry), then ``num_negatives`` indices
        drawn uniformly over the bank (the official ``AliasMethod`` with uniform unigrams)."""
        local = index.shape[0]
        generator = torch.Generator(device=index.device)
        generator.manual_seed((self.noise_seed << 32) + step)
        noise = torch.randint(
            self.num_samples, (local * world_size(), num_negatives), generator=generator, device=index.device
        )
        start = local_row_offset(local)
        return torch.cat([index.view(-1, 1), noise[start : start + local]], dim=1)

    def normalizer(self, estimate: Callable[[], Tensor]) -> Tensor:
        """``Z``: ``estimate()`` averaged over ranks the first time (the official "set Z from the first
        batch"), the stored value afterwards."""
        if not self._normalizer_set:
            with torch.no_grad():
                estimated = all_reduce_mean(estimate().detach().float().clone())
                self.nce_normalizer.copy_(torch.where(self.nce_normalizer > 0, self.nce_normalizer, estimated))
            self._normalizer_set = True
        return self.nce_normalizer

    @torch.no_grad()
    def update_(self, index: Tensor, features: Tensor) -> None:
        """``bank[i] ← normalize(m·bank[i] + (1 − m)·f_i)`` at the indices of the global batch."""
        index = gather_no_grad(index)
        features = gather_no_grad(features.detach().float())
        mixed = self.momentum * self.features[index] + (1.0 - self.momentum) * features
        self.features.index_copy_(0, index, F.normalize(mixed, dim=1))


def bank_loss(
    kind: BankLoss, anchors: Tensor, bank: MemoryBank, index: Tensor, candidates: Optional[Tensor], temperature: float
) -> Tensor:
    """The loss of ``anchors`` against ``bank``: NCE, softmax over the sampled candidates, or the exact
    softmax over the whole bank (``candidates`` unused)."""
    if kind == "full_softmax":
        return full_softmax_loss(anchors, bank.features, index, temperature)
    assert candidates is not None
    if kind == "sampled_softmax":
        return sampled_softmax_loss(anchors, bank.features, candidates, temperature)
    z = bank.normalizer(lambda: nce_normalizer(anchors, bank.features, candidates, temperature))
    return nce_loss(anchors, bank.features, candidates, z, temperature)


def check_bank_options(method: str, loss: str, num_negatives: int, temperature: float, momentum: float) -> None:
    """Raise a one-line ConfigError for options no memory-bank method can run with."""
    if loss not in ("nce", "sampled_softmax", "full_softmax"):
        raise ConfigError(f"method.loss of {method} must be nce, sampled_softmax or full_softmax, got '{loss}'")
    if loss != "full_softmax" and num_negatives < 1:
        raise ConfigError(f"method.num_negatives of {method} must be >= 1 with loss={loss}, got {num_negatives}")
    if temperature <= 0:
        raise ConfigError(f"method.temperature of {method} must be > 0, got {temperature}")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"method.bank_momentum of {method} must be in [0, 1), got {momentum}")
