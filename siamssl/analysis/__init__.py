"""Analyses of why Siamese methods do not collapse: the unified gradient decomposition of each
loss family (:mod:`siamssl.analysis.gradients`)."""

from siamssl.analysis.gradients import (
    GradientDecomposition,
    barlow_twins_gradient,
    infonce_gradient,
    linear_predictor_gradient,
    simclr_gradient,
    unigrad_gradient,
)

__all__ = [
    "GradientDecomposition",
    "barlow_twins_gradient",
    "infonce_gradient",
    "linear_predictor_gradient",
    "simclr_gradient",
    "unigrad_gradient",
]
