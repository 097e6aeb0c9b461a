"""DINO's projection head: MLP → l2-normalized bottleneck → weight-normalized prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.heads.mlp import build_mlp


class WeightNormLinear(nn.Module):
    """A bias-free Linear with weight normalization (Salimans & Kingma 2016): row ``k`` of the weight
    is ``g_k · v_k / ‖v_k‖``, as ``torch.nn.utils.weight_norm(nn.Linear(...))`` with ``dim=0``.

    ``g`` starts at 1. ``fixed_scale=True`` freezes it (DINO's ``norm_last_layer``), so every
    output is a cosine between the input and a unit prototype, times ‖input‖.
    """

    def __init__(self, in_dim: int, out_dim: int, fixed_scale: bool = True) -> None:
        super().__init__()
        linear = nn.Linear(in_dim, out_dim, bias=False)  # v keeps nn.Linear's default init, as DINO's
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_scale)

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        out_dim, in_dim = self.weight_v.shape
        return f"in_dim={in_dim}, out_dim={out_dim}, fixed_scale={not self.weight_g.requires_grad}"


class DINOHead(nn.Module):
    """DINOHead of facebookresearch/dino ``vision_transformer.py``:

        Linear(in, hidden) → [BN] → GELU → (Linear(hidden, hidden) → [BN] → GELU) × (layers − 2)
        → Linear(hidden, bottleneck) → l2-normalize → WeightNormLinear(bottleneck, out_dim)

    MLP weights start from a truncated normal (std 0.02) and biases from 0; the last layer is called
    ``last_layer`` so that methods can freeze it (DINO drops its gradient in the first epoch).

    Args:
        in_dim: backbone feature width. out_dim: number of prototypes K (65536).
        hidden_dim: 2048. bottleneck_dim: 256. num_layers: MLP layers (3; 1 is a single Linear).
        use_bn: BatchNorm after the hidden layers (False; DINO's ``use_bn_in_head``).
        norm_last_layer: freeze the weight-norm scale at 1 (True; False is better but less stable
            for ViT-S, and slightly worse for ResNet-50 per dino issue #126).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = build_mlp(
            in_dim, hidden_dim, bottleneck_dim, num_layers=max(1, num_layers), hidden_bn=use_bn,
            hidden_bias=True, output_bias=True, activation="gelu",
        )
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_scale=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
