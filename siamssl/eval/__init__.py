"""Evaluation protocols: weighted kNN (and, with the evaluation tools, linear probes and diagnostics)."""

from siamssl.eval.knn import extract_features, knn_accuracy, knn_scores

__all__ = ["extract_features", "knn_accuracy", "knn_scores"]
