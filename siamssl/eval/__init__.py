"""Evaluation: weighted kNN, linear probes, representation diagnostics and run reports.

Command line (each on a trained run's checkpoint or run directory):

* ``python -m siamssl.eval.linear --checkpoint RUN/ [preset=simsiam ...]`` — linear probe
* ``python -m siamssl.eval.knn --checkpoint RUN/ [ks=[10,20,100,200] ...]`` — weighted kNN
* ``python -m siamssl.eval.diagnostics --checkpoint RUN/`` — std, RankMe, alignment, uniformity, spectrum
* ``python -m siamssl.eval.report RUN/`` — PNG plots and a markdown summary

Library: the pure functions below. Submodules are imported on first use, so that
``python -m siamssl.eval.knn`` runs its module only once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "extract_features": "siamssl.eval.knn",
    "knn_accuracy": "siamssl.eval.knn",
    "knn_scores": "siamssl.eval.knn",
    "alignment": "siamssl.eval.diagnostics",
    "covariance_spectrum": "siamssl.eval.diagnostics",
    "normalized_channel_std": "siamssl.eval.diagnostics",
    "rankme": "siamssl.eval.diagnostics",
    "uniformity": "siamssl.eval.diagnostics",
    "train_linear_classifier": "siamssl.eval.linear",
    "LINEAR_PRESETS": "siamssl.eval.linear",
    "load_run": "siamssl.eval.runs",
    "pca_2d": "siamssl.eval.embedding2d",
    "tsne": "siamssl.eval.embedding2d",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'siamssl.eval' has no attribute '{name}'")
