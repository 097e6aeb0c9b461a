"""Projector and predictor heads: :func:`build_mlp`, named presets with the papers' values, and DirectPred's
linear predictor set from the correlation of its inputs (:class:`DirectPredictor`)."""

from siamssl.heads.directpred import DirectPredictor, DirectPredOptions, directpred_weight, input_correlation
from siamssl.heads.mlp import (
    HEAD_PRESETS,
    build_mlp,
    byol_mlp,
    moco_v2_head,
    moco_v3_predictor,
    moco_v3_projector,
    simsiam_cifar_projector,
    simsiam_predictor,
    simsiam_projector,
)

__all__ = [
    "DirectPredOptions",
    "DirectPredictor",
    "HEAD_PRESETS",
    "build_mlp",
    "byol_mlp",
    "directpred_weight",
    "input_correlation",
    "moco_v2_head",
    "moco_v3_predictor",
    "moco_v3_projector",
    "simsiam_cifar_projector",
    "simsiam_predictor",
    "simsiam_projector",
]
