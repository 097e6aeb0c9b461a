"""Monitors: plug-ins that watch training and report numbers, registered by name.

A monitor sees every training step's outputs (``on_step``, cheap, no host synchronization), is
evaluated every ``eval.every_n_epochs`` epochs (``evaluate``) and may measure the untrained model
once (``on_train_start``). Its options are the ``eval.<name>`` config section; its state goes into
checkpoints. Adding one needs no change to the trainer: register it and list it in ``eval.monitors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from siamssl.data.datasets import ImageSplit, LabeledImages
from siamssl.data.loader import eval_batches
from siamssl.eval.knn import extract_features, knn_accuracy
from siamssl.methods.base import Batch, SSLMethod
from siamssl.registry import Registry


@dataclass(frozen=True)
class MonitorContext:
    """What monitors may use: the labeled data, the normalization the model was trained with, the
    device and evaluation batch settings."""

    data: LabeledImages
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    batch_size: int
    crop_size: int
    num_workers: int = 0


class Monitor:
    """Base class; every hook is optional."""

    def __init__(self, options: Any, context: MonitorContext) -> None:
        self.options = options
        self.context = context

    def on_train_start(self, method: SSLMethod) -> dict[str, float]:
        """Measurements of the untrained model (reported in ``summary.json``)."""
        return {}

    def on_step(self, batch: Batch, outputs: dict[str, Tensor]) -> None:
        """Called after every optimizer step with the method's outputs."""

    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        """Called every ``eval.every_n_epochs`` epochs and at the end of training."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


MONITORS: Registry[type[Monitor]] = Registry("monitor")


def split_features(method: SSLMethod, split: ImageSplit, context: MonitorContext, limit: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Features of ``method.embed`` on a split (``limit`` of its samples), with the model in eval mode."""
    was_training = method.training
    method.eval()
    try:
        batches = eval_batches(
            split.subset(limit), context.batch_size, context.mean, context.std,
            context.device, context.crop_size, context.num_workers,
        )
        return extract_features(method.embed, batches)
    finally:
        method.train(was_training)


@dataclass
class KNNOptions:
    """Weighted kNN monitor (InstDisc protocol): ``k`` neighbours, temperature ``temperature``, the
    train split (``max_train_samples`` of it) as memory bank and the test split as queries.
    ``random_init``: also measure the untrained encoder (``knn_top1_random_init``)."""

    k: int = 200
    temperature: float = 0.1
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    random_init: bool = False


@MONITORS.register("knn", config=KNNOptions)
class KNNMonitor(Monitor):
    """Reports ``knn_top1``: weighted kNN accuracy of the backbone features."""

    options: KNNOptions

    def _accuracy(self, method: SSLMethod) -> float:
        data = self.context.data
        if data.test is None:
            return float("nan")
        bank, bank_labels = split_features(method, data.train, self.context, self.options.max_train_samples)
        query, query_labels = split_features(method, data.test, self.context, self.options.max_test_samples)
        k = self.options.k
        return knn_accuracy(query, query_labels, bank, bank_labels, len(data.classes), [k], self.options.temperature)[k]

    def on_train_start(self, method: SSLMethod) -> dict[str, float]:
        return {"knn_top1_random_init": self._accuracy(method)} if self.options.random_init else {}

    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        return {"knn_top1": self._accuracy(method)}


@MONITORS.register("embedding_std")
class EmbeddingStdMonitor(Monitor):
    """Reports ``z_std``: the per-channel std of the l2-normalized projector output, averaged over
    channels and over the steps since the last evaluation (SimSiam, Fig. 2): about 1/√d when the
    output is healthy, 0 at collapse. Uses the ``embedding`` the method returns."""

    def __init__(self, options: Any, context: MonitorContext) -> None:
        super().__init__(options, context)
        self.total = torch.zeros((), dtype=torch.float64, device=context.device)
        self.count = 0

    def on_step(self, batch: Batch, outputs: dict[str, Tensor]) -> None:
        embedding = outputs.get("embedding")
        if embedding is not None:
            self.total += F.normalize(embedding.float(), dim=1).std(dim=0).mean().double()
            self.count += 1

    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        if self.count == 0:
            return {}
        value = float(self.total) / self.count
        self.total.zero_()
        self.count = 0
        return {"z_std": value}

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.cpu(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total.copy_(state["total"])
        self.count = int(state["count"])
