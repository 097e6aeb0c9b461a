"""One MLP builder for every projector and predictor, plus presets with the papers' values."""

from __future__ import annotations

from typing import Literal, Optional

from torch import nn

OutputNorm = Literal["none", "bn", "bn_no_affine", "bn_no_beta"]
Activation = Literal["relu", "gelu"]


def build_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    hidden_bn: bool = True,
    output_norm: OutputNorm = "none",
    hidden_bias: Optional[bool] = None,
    output_bias: Optional[bool] = None,
    activation: Activation = "relu",
) -> nn.Sequential:
    """``num_layers`` Linear layers; each hidden one is followed by [BN] + activation.

    Args:
        hidden_bn: BatchNorm1d after each hidden Linear (SimSiam, BYOL, MoCo v3, SimCLR; not MoCo v2).
        output_norm: ``"bn"``, ``"bn_no_affine"`` (BN without γ/β, SimSiam/MoCo v3 projectors) or
            ``"bn_no_beta"`` (BN with γ but no β, TF's ``center=False``: SimCLR's projector) after the
            last Linear, or ``"none"``.
        hidden_bias / output_bias: bias of the hidden / last Linear layers. Default: a bias only when no
            BN follows, since BN's mean subtraction cancels it (SimSiam sets ``requires_grad=False`` on
            that bias for the same reason). Pass True to reproduce code that keeps it (BYOL, VICReg).
        activation: ``"relu"`` (default) or ``"gelu"`` (DINO's head).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    hidden_bias = (not hidden_bn) if hidden_bias is None else hidden_bias
    output_bias = (output_norm == "none") if output_bias is None else output_bias
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=hidden_bias))
        if hidden_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True) if activation == "relu" else nn.GELU())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=output_bias))
    if output_norm == "bn":
        layers.append(nn.BatchNorm1d(out_dim))
    elif output_norm == "bn_no_affine":
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    elif output_norm == "bn_no_beta":
        norm = nn.BatchNorm1d(out_dim)
        norm.bias.requires_grad_(False)  # β stays 0: only the γ scale is learned
        layers.append(norm)
    elif output_norm != "none":
        raise ValueError(f"output_norm must be 'none', 'bn', 'bn_no_affine' or 'bn_no_beta', got {output_norm!r}")
    return nn.Sequential(*layers)


def simsiam_projector(in_dim: int, dim: int = 2048, num_layers: int = 3) -> nn.Sequential:
    """SimSiam projector (facebookresearch/simsiam ``builder.py``): ``num_layers`` × Linear(dim) with
    BN + ReLU on hidden layers and BN(affine=False) on the output. ImageNet: 3 layers; CIFAR: 2."""
    return build_mlp(in_dim, dim, dim, num_layers=num_layers, output_norm="bn_no_affine")


def simsiam_cifar_projector(in_dim: int, dim: int = 2048) -> nn.Sequential:
    """SimSiam's CIFAR projector (paper, App. D): the 2-layer variant of :func:`simsiam_projector`."""
    return simsiam_projector(in_dim, dim, num_layers=2)


def simsiam_predictor(dim: int = 2048, hidden_dim: int = 512) -> nn.Sequential:
    """SimSiam's bottleneck predictor: Linear(dim→512, no bias) + BN + ReLU → Linear(512→dim) with bias,
    no output BN (BN there makes training unstable, paper Table 3)."""
    return build_mlp(dim, hidden_dim, dim, num_layers=2, output_norm="none")


def byol_mlp(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """BYOL projector/predictor (deepmind-research/byol ``networks.MLP``): Linear(with bias) + BN + ReLU
    → Linear(no bias), no output BN."""
    return build_mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bias=True, output_bias=False)


def moco_v2_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """MoCo v2 MLP head: Linear + ReLU + Linear, biases, no BN (facebookresearch/moco ``--mlp``)."""
    return build_mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bn=False)


def moco_v3_projector(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 2) -> nn.Sequential:
    """MoCo v3 projector (ResNet: 2 layers; ViT: 3): BN on hidden layers, BN(affine=False) output, no biases."""
    return build_mlp(in_dim, hidden_dim, out_dim, num_layers=num_layers, output_norm="bn_no_affine")


def moco_v3_predictor(dim: int = 256, hidden_dim: int = 4096, output_bn: bool = False) -> nn.Sequential:
    """MoCo v3 predictor: 2 layers, no biases; no output BN for ResNet, BN(affine=False) for ViT."""
    return build_mlp(
        dim, hidden_dim, dim, num_layers=2, output_norm="bn_no_affine" if output_bn else "none", output_bias=False
    )


def simclr_projector(in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, num_layers: int = 3) -> nn.Sequential:
    """SimCLR projector (google-research/simclr ``ProjectionHead``; v1 ``model_util.projection_head``):
    ``num_layers - 1`` × [Linear(hidden, no bias) + BN + ReLU], then Linear(out_dim, no bias) + BN with
    γ and no β (``center=False``). ``hidden_dim`` defaults to ``in_dim`` as in the code (2048 for a
    ResNet-50). 2 layers = SimCLR v1, 3 = SimCLR v2 (the code's default since v2)."""
    return build_mlp(in_dim, hidden_dim or in_dim, out_dim, num_layers=num_layers, output_norm="bn_no_beta")


def barlow_twins_projector(in_dim: int, dim: int = 8192, num_layers: int = 3) -> nn.Sequential:
    """Barlow Twins projector (facebookresearch/barlowtwins ``main.py``, ``--projector 8192-8192-8192``):
    [Linear(no bias) + BN + ReLU] × (num_layers − 1) → Linear(no bias). The affine-free BN that the
    official code applies next is the standardization inside :func:`siamssl.losses.barlow_twins_loss`."""
    return build_mlp(in_dim, dim, dim, num_layers=num_layers, output_bias=False)


def vicreg_expander(in_dim: int, dim: int = 8192, num_layers: int = 3) -> nn.Sequential:
    """VICReg expander (facebookresearch/vicreg ``main_vicreg.py`` ``Projector``, ``--mlp 8192-8192-8192``):
    [Linear(with bias) + BN + ReLU] × (num_layers − 1) → Linear(no bias), no output BN."""
    return build_mlp(in_dim, dim, dim, num_layers=num_layers, hidden_bias=True, output_bias=False)


def swav_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """SwAV projection head (facebookresearch/swav ``src/resnet50.py``): Linear + BN + ReLU → Linear,
    both with biases, no output BN; the method l2-normalizes its output."""
    return build_mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bias=True, output_bias=True)


HEAD_PRESETS = {
    "simsiam_projector": simsiam_projector,
    "simsiam_cifar_projector": simsiam_cifar_projector,
    "simsiam_predictor": simsiam_predictor,
    "byol_mlp": byol_mlp,
    "moco_v2_head": moco_v2_head,
    "moco_v3_projector": moco_v3_projector,
    "moco_v3_predictor": moco_v3_predictor,
    "barlow_twins_projector": barlow_twins_projector,
    "vicreg_expander": vicreg_expander,
    "swav_projector": swav_projector,
    "simclr_projector": simclr_projector,
}
