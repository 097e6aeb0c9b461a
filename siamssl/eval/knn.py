"""Weighted k-nearest-neighbour classification on l2-normalized features (Wu et al., "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018; the MoCo CIFAR demo's
``knn_predict``): each of the k most cosine-similar memory samples votes for its label with weight
exp(sim/T).

``python -m siamssl.eval.knn --checkpoint RUN/ [key=value ...]`` evaluates a trained run (see
:class:`KNNEvalOptions`) and writes ``RUN/knn.json``."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


_HALF = (torch.float16, torch.bfloat16)


def normalized_rows(x: Tensor, dtype: Optional[torch.dtype] = None, chunk_size: int = 65536) -> Tensor:
    """The l2-normalized rows of ``x`` in ``dtype`` (default: float32, or ``x``'s dtype when it is
    a half type), normalized in float32 one chunk at a time, so a large half-precision bank is
    never copied to float32 as a whole."""
    dtype = dtype or (x.dtype if x.dtype in _HALF else torch.float32)
    if x.shape[0] <= chunk_size:
        return F.normalize(x.float(), dim=1).to(dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        out[start : start + chunk_size] = F.normalize(x[start : start + chunk_size].float(), dim=1)
    return out


def knn_scores(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (200,),
    temperature: float = 0.1,
    chunk_size: int = 1024,
    bank_normalized: bool = False,
    bank_chunk_size: int = 65536,
) -> dict[int, Tensor]:
    """Class scores (Q, num_classes) of each query for every k in ``ks``, from one similarity pass:
    Σ over the k nearest neighbours of class c of exp(sim/T), scaled per query by exp(−max sim/T).

    Args:
        query: (Q, D) features; bank: (M, D) features of the labeled memory set; both are
            l2-normalized here. A float16/bfloat16 bank is kept in its dtype (half the memory)
            and converted to float32 ``bank_chunk_size`` rows at a time: similarities and votes
            are always float32, since similarities rounded to 16 bits would tie and reorder the
            neighbours. Any other bank is used in float32. bank_labels: (M,) integer labels.
        ks: numbers of neighbours (each clipped to M). temperature: T in exp(sim/T).
        bank_normalized: the bank's rows are already l2-normalized (and in a half or float32
            dtype): used as they are, without a normalized copy.
    """
    dtype = bank.dtype if bank.dtype in _HALF else torch.float32
    query = normalized_rows(query, torch.float32)
    bank = bank if bank_normalized and bank.dtype == dtype else normalized_rows(bank, dtype)
    max_k = min(max(ks), bank.shape[0])
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, query.shape[0], chunk_size):
        top_sim, top_idx = _similarities(query[start : start + chunk_size], bank, bank_chunk_size).topk(max_k, dim=1)
        # exp((sim - max sim)/T): the same votes up to a per-query factor, without overflow at small T
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        neighbour_labels = bank_labels[top_idx]
        for k in ks:
            kk = min(k, max_k)
            votes = torch.zeros(top_idx.shape[0], num_classes, device=query.device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            scores[k].append(votes)
    return {k: torch.cat(v) if v else torch.zeros(0, num_classes, device=query.device) for k, v in scores.items()}


def _similarities(query: Tensor, bank: Tensor, bank_chunk_size: int) -> Tensor:
    """``query @ bank.T`` in float32, converting a half-precision bank one chunk at a time."""
    if bank.dtype == torch.float32:
        return query @ bank.t()
    sims = torch.empty(query.shape[0], bank.shape[0], device=query.device)
    for start in range(0, bank.shape[0], bank_chunk_size):
        sims[:, start : start + bank_chunk_size] = query @ bank[start : start + bank_chunk_size].float().t()
    return sims


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
def extract_features(
    embed: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    autocast_dtype: Optional[torch.dtype] = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Run ``embed`` over (images, labels) batches; returns (features in ``dtype``, labels)
    concatenated. ``autocast_dtype`` (bf16/fp16): the forward passes run under that autocast, as
    the training step does."""
    features, labels = [], []
    for images, batch_labels in batches:
        with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = embed(images)
        features.append(output.to(dtype))
        labels.append(batch_labels)
    if not features:
        raise ValueError("extract_features got no batches (an empty split)")
    return torch.cat(features), torch.cat(labels)


# ------------------------------------------------------------------------------- command line


@dataclass
class KNNEvalOptions:
    """Options of ``python -m siamssl.eval.knn`` (``key=value``).

    ks: numbers of neighbours, all from one similarity pass. temperature: T of the exp(sim/T) vote
    (0.1: InstDisc / MoCo demo; DINO uses 0.07). features: ``backbone`` or ``projector``.
    max_train_samples / max_test_samples: fixed random subsets of the memory bank / queries.
    batch_size: batch of the frozen forward passes. cache: keep the features in RUN/eval_cache.
    random_init: evaluate the untrained encoder (the run's seed). output: results file (default
    RUN/knn[_projector][_random_init].json).
    """

    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.1
    features: Literal["backbone", "projector"] = "backbone"
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    batch_size: int = 256
    cache: bool = True
    random_init: bool = False
    device: str = "auto"
    num_workers: int = 0
    output: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")


def evaluate_knn(checkpoint: str | Path, options: KNNEvalOptions, data_overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Any]:
    """Weighted kNN of a checkpoint's frozen features (train split as memory bank, test split as
    queries) for every k in ``options.ks``; writes and returns the JSON results."""
    from siamssl.eval.runs import default_output, frozen_features, load_run, write_json

    run = load_run(checkpoint, data_overrides, options.device, options.random_init)
    extract = dict(kind=options.features, batch_size=options.batch_size, cache=options.cache, num_workers=options.num_workers)
    bank, bank_labels = frozen_features(run, "train", limit=options.max_train_samples, **extract)  # type: ignore[arg-type]
    query, query_labels = frozen_features(run, "test", limit=options.max_test_samples, **extract)  # type: ignore[arg-type]
    num_classes = len(run.labeled_data().classes)
    scores = knn_scores(query, bank, bank_labels, num_classes, options.ks, options.temperature)
    top1, top5 = {}, {}
    for k, s in scores.items():
        top = s.topk(min(5, num_classes), dim=1).indices
        hits = top == query_labels.view(-1, 1)
        top1[str(k)] = float(hits[:, 0].float().mean())
        top5[str(k)] = float(hits.any(dim=1).float().mean())
    payload = {
        "checkpoint": str(run.checkpoint),
        "random_init": run.random_init,
        "features": options.features,
        "temperature": options.temperature,
        "num_train": int(bank.shape[0]),
        "num_test": int(query.shape[0]),
        "feature_dim": int(bank.shape[1]),
        "top1": top1,
        "top5": top5,
        "options": asdict(options),
    }
    output = Path(options.output) if options.output else default_output(run, "knn", options.features)
    write_json(output, payload)
    if not quiet:
        line = ", ".join(f"k={k}: {100 * v:.2f}%" for k, v in top1.items())
        print(f"siamssl: kNN top-1 ({options.features} features{', random init' if run.random_init else ''}, T={options.temperature}): {line}; wrote {output}", file=sys.stderr)
    return payload


def main(argv: Optional[list[str]] = None, prog: str = "python -m siamssl.eval.knn") -> int:
    from siamssl.eval.runs import evaluation_main

    return evaluation_main(
        argv,
        prog,
        "Weighted kNN (cosine similarity, exp(sim/T) votes) of a frozen encoder, several k in one pass.",
        KNNEvalOptions,
        evaluate_knn,
        epilog="example: python -m siamssl.eval.knn --checkpoint runs/simsiam ks=[20,200] temperature=0.07",
    )


if __name__ == "__main__":
    from siamssl.eval.knn import main as _main

    sys.exit(_main())
