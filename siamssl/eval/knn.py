"""Weighted k-nearest-neighbour classification on l2-normalized features (Wu et al., "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018; the MoCo CIFAR demo's
``knn_predict``): each of the k most cosine-similar memory samples votes for its label with weight
exp(sim/T)."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_scores(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (200,),
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> dict[int, Tensor]:
    """Class scores (Q, num_classes) of each query for every k in ``ks``, from one similarity pass.

    Args:
        query: (Q, D) features; bank: (M, D) features of the labeled memory set; both are
            l2-normalized here. bank_labels: (M,) integer labels.
        ks: numbers of neighbours (each clipped to M). temperature: T in exp(sim/T).
    """
    query = F.normalize(query.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    max_k = min(max(ks), bank.shape[0])
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, query.shape[0], chunk_size):
        top_sim, top_idx = (query[start : start + chunk_size] @ bank.t()).topk(max_k, dim=1)
        weights = (top_sim / temperature).exp()
        neighbour_labels = bank_labels[top_idx]
        for k in ks:
            kk = min(k, max_k)
            votes = torch.zeros(top_idx.shape[0], num_classes, device=query.device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            scores[k].append(votes)
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_accuracy(
    query: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (200,),
    temperature: float = 0.1,
) -> dict[int, float]:
    """Top-1 accuracy of weighted kNN for each k in ``ks``."""
    scores = knn_scores(query, bank, bank_labels, num_classes, ks, temperature)
    return {k: float((s.argmax(dim=1) == query_labels).float().mean()) for k, s in scores.items()}


@torch.no_grad()
def extract_features(embed: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Run ``embed`` over (images, labels) batches; returns (features, labels) concatenated."""
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(embed(images).float())
        labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)
