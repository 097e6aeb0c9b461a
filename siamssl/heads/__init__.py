"""Projector and predictor heads: :func:`build_mlp` and named presets with the papers' values."""

from siamssl.heads.mlp import (
    HEAD_PRESETS,
    build_mlp,
    byol_mlp,
    moco_v2_head,
    moco_v3_predictor,
    moco_v3_projector,
    simclr_projector,
    simsiam_cifar_projector,
    simsiam_predictor,
    simsiam_projector,
)

__all__ = [
    "HEAD_PRESETS",
    "build_mlp",
    "byol_mlp",
    "moco_v2_head",
    "moco_v3_predictor",
    "moco_v3_projector",
    "simclr_projector",
    "simsiam_cifar_projector",
    "simsiam_predictor",
    "simsiam_projector",
]
