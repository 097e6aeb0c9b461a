"""CMC (Tian, Krishnan, Isola, "Contrastive Multiview Coding", ECCV 2020; official code
HobbitLong/CMC), the L / ab two-view version.

The RGB view is converted to CIE Lab inside the method; the lightness L (1 channel) and the colour
ab (2 channels) are separate views with separate encoders, each a backbone and a linear head to an
l2-normalized 128-d feature. Each view has a memory bank (momentum 0.5). The loss contrasts both
ways, summed: L anchors against the ab bank and ab anchors against the L bank, with NCE (K = 4096
noise entries shared by both directions, τ = 0.07, one constant Z per direction), softmax over the
sampled candidates, or the exact softmax over the bank (``NCEAverage``/``NCECriterion`` and
``train_CMC.py``). Evaluation uses both encoders' backbone features concatenated, as the paper's
linear evaluation does (``LinearProbing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.errors import ConfigError
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.memory_bank import BankLoss, MemoryBank, bank_loss, check_bank_options
from siamssl.methods.registry import register_method

# skimage.color.rgb2lab (used by the official RGB2Lab): sRGB primaries, D65 white, 2° observer.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
# The official train_CMC.py normalization: each Lab channel's range over the sRGB gamut mapped to [-1, 1].
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def rgb_to_lab(rgb: Tensor, xyz_from_rgb: Optional[Tensor] = None, white: Optional[Tensor] = None) -> Tensor:
    """sRGB in [0, 1] (B, 3, H, W) → CIE Lab (L in [0, 100]), the formulas of skimage's ``rgb2lab``:
    inverse sRGB gamma, linear RGB → XYZ, XYZ / D65 white, then ``L = 116 f(Y) − 16``,
    ``a = 500 (f(X) − f(Y))``, ``b = 200 (f(Y) − f(Z))`` with ``f(t) = t^(1/3)`` above 0.008856.

    ``xyz_from_rgb`` (3, 3) and ``white`` (1, 3, 1, 1) may be passed already on the device (CMC keeps
    them as buffers): made here from Python numbers they cost a blocking copy to a GPU."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    matrix = torch.tensor(_XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device) if xyz_from_rgb is None else xyz_from_rgb.to(rgb.dtype)
    white = torch.tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1) if white is None else white.to(rgb.dtype)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856).pow(1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


class LabEncoders(nn.Module):
    """The two backbones: normalized Lab (B, 3, H, W) → (L features, ab features)."""

    def __init__(self, l_encoder: nn.Module, ab_encoder: nn.Module) -> None:
        super().__init__()
        self.l = l_encoder
        self.ab = ab_encoder

    def forward(self, lab: Tensor) -> tuple[Tensor, Tensor]:
        return self.l(lab[:, :1]), self.ab(lab[:, 1:])


@register_method("cmc")
class CMC(SSLMethod):
    # Per-GPU BatchNorm, as the official code (HobbitLong/CMC ``train_CMC.py`` uses DataParallel).
    default_sync_bn = False

    @dataclass
    class Config:
        """CMC options; defaults are the official ImageNet values (configs/cmc.yaml has a CIFAR recipe).

        embedding_dim: width of each view's l2-normalized head output (128).
        loss: "nce" (official default), "sampled_softmax" (the official ``--softmax``, CE over the
            K + 1 candidates) or "full_softmax" (exact softmax over the whole bank).
        num_negatives: K, noise entries per anchor, shared by both directions (4096).
        temperature: τ (0.07; the paper uses 0.1 for STL-10).
        bank_momentum: m of the bank update ``normalize(m·old + (1 − m)·new)`` (0.5).
        """

        embedding_dim: int = 128
        loss: BankLoss = "nce"
        num_negatives: int = 4096
        temperature: float = 0.07
        bank_momentum: float = 0.5

    def __init__(
        self, l_encoder: nn.Module, ab_encoder: nn.Module, feature_dim: int, cfg: "CMC.Config", num_samples: int,
        image_mean: Sequence[float], image_std: Sequence[float],
    ) -> None:
        super().__init__()
        check_bank_options("cmc", cfg.loss, cfg.num_negatives, cfg.temperature, cfg.bank_momentum)
        self.cfg = cfg
        self.backbone = LabEncoders(l_encoder, ab_encoder)
        self.feature_dim = 2 * feature_dim
        self.head_l = nn.Linear(feature_dim, cfg.embedding_dim)
        self.head_ab = nn.Linear(feature_dim, cfg.embedding_dim)
        self.bank_l = MemoryBank(num_samples, cfg.embedding_dim, cfg.bank_momentum)
        self.bank_ab = MemoryBank(num_samples, cfg.embedding_dim, cfg.bank_momentum)
        for name, values in (("image_mean", image_mean), ("image_std", image_std), ("lab_mean", LAB_MEAN), ("lab_std", LAB_STD), ("d65_white", _D65_WHITE)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("xyz_from_rgb", torch.tensor(_XYZ_FROM_RGB, dtype=torch.float32), persistent=False)
        self._pending: Optional[tuple[Tensor, Tensor, Tensor]] = None

    @classmethod
    def from_config(cls, cfg: "CMC.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "CMC":
        if context.make_backbone is None or context.image_mean is None or context.image_std is None:
            raise ConfigError("cmc needs MethodContext.make_backbone, image_mean and image_std (the trainer sets them)")
        l_encoder, l_dim = context.make_backbone(in_channels=1)
        ab_encoder, ab_dim = context.make_backbone(in_channels=2)
        assert l_dim == ab_dim == feature_dim
        return cls(l_encoder, ab_encoder, feature_dim, cfg, context.num_samples, context.image_mean, context.image_std)

    def lab_input(self, images: Tensor) -> Tensor:
        """Normalized RGB views → Lab normalized as in the official code, computed in float32."""
        with torch.autocast(images.device.type, enabled=False):
            rgb = (images.float() * self.image_std + self.image_mean).clamp(0.0, 1.0)
            return (rgb_to_lab(rgb, self.xyz_from_rgb, self.d65_white) - self.lab_mean) / self.lab_std

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(v_l, v_ab, f_l, f_ab): l2-normalized head outputs and backbone features of both views."""
        f_l, f_ab = self.backbone(self.lab_input(images))
        v_l = F.normalize(self.head_l(f_l).float(), dim=1)
        v_ab = F.normalize(self.head_ab(f_ab).float(), dim=1)
        return v_l, v_ab, f_l, f_ab

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        v_l, v_ab, f_l, f_ab = self.encode(batch.views[0])
        candidates = None
        if self.cfg.loss != "full_softmax":
            candidates = self.bank_l.draw_candidates(batch.index, self.cfg.num_negatives, progress.step)
        loss_l = bank_loss(self.cfg.loss, v_l, self.bank_ab, batch.index, candidates, self.cfg.temperature)
        loss_ab = bank_loss(self.cfg.loss, v_ab, self.bank_l, batch.index, candidates, self.cfg.temperature)
        self._pending = (batch.index, v_l.detach(), v_ab.detach())
        return {
            "loss": loss_l + loss_ab,
            "loss_l": loss_l.detach(),
            "loss_ab": loss_ab.detach(),
            "features": torch.cat([f_l, f_ab], dim=1).detach(),
            "embedding": v_l.detach(),
        }

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        if self._pending is not None:
            index, v_l, v_ab = self._pending
            self.bank_l.update_(index, v_l)
            self.bank_ab.update_(index, v_ab)
            self._pending = None

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Both encoders' backbone features, concatenated (the paper's linear evaluation)."""
        return torch.cat(self.backbone(self.lab_input(images)), dim=1)
