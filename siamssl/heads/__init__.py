"""Projector and predictor heads: :func:`build_mlp` and named presets with the papers' values, DINO's
head, and DirectPred's linear predictor set from the correlation of its inputs (:class:`DirectPredictor`)."""

from siamssl.heads.dino import DINOHead, WeightNormLinear
from siamssl.heads.directpred import DirectPredictor, DirectPredOptions, directpred_weight, input_correlation
from siamssl.heads.mlp import (
    HEAD_PRESETS,
    barlow_twins_projector,
    build_mlp,
    byol_mlp,
    moco_v2_head,
    moco_v3_predictor,
    moco_v3_projector,
    simclr_projector,
    simsiam_cifar_projector,
    simsiam_predictor,
    simsiam_projector,
    swav_projector,
    vicreg_expander,
)

__all__ = [
    "DINOHead",
    "DirectPredOptions",
    "DirectPredictor",
    "HEAD_PRESETS",
    "WeightNormLinear",
    "barlow_twins_projector",
    "build_mlp",
    "byol_mlp",
    "directpred_weight",
    "input_correlation",
    "moco_v2_head",
    "moco_v3_predictor",
    "moco_v3_projector",
    "simclr_projector",
    "simsiam_cifar_projector",
    "simsiam_predictor",
    "simsiam_projector",
    "swav_projector",
    "vicreg_expander",
]
