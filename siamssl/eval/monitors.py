"""Monitors: plug-ins that watch training and report numbers, registered by name.

A monitor sees every training step's outputs (``on_step``, cheap, no host synchronization), is
evaluated every ``eval.every_n_epochs`` epochs (``evaluate``) and may measure the untrained model
once (``on_train_start``). Its options are the ``eval.<name>`` config section; its state goes into
checkpoints. Adding one needs no change to the trainer: register it and list it in ``eval.monitors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from siamssl.data.datasets import ImageSplit, LabeledImages
from siamssl.data.loader import eval_batches
from siamssl.distributed import all_reduce_sum, gather_no_grad, is_distributed, world_size
from siamssl.eval.features import measure_representation
from siamssl.eval.knn import extract_features, knn_accuracy
from siamssl.eval.linear import LinearClassifier
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


def split_features(
    method: SSLMethod, split: ImageSplit, context: MonitorContext, limit: Optional[int] = None,
    encode: Optional[Callable[[Tensor], Tensor]] = None,
) -> tuple[Tensor, Tensor]:
    """Features of ``encode`` (default ``method.embed``) on a split (``limit`` of its samples), with
    the model in eval mode."""
    was_training = method.training
    method.eval()
    try:
        batches = eval_batches(
            split.subset(limit), context.batch_size, context.mean, context.std,
            context.device, context.crop_size, context.num_workers,
        )
        return extract_features(encode or method.embed, batches)
    finally:
        method.train(was_training)


@dataclass
class KNNOptions:
    """Weighted kNN monitor (InstDisc protocol): ``k`` neighbours, temperature ``temperature``, the
    train split (``max_train_samples`` of it) as memory bank and the test split as queries.
    ``random_init``: also measure the untrained encoder (``knn_top1_random_init``).
    ``features``: ``backbone`` (``method.embed``, the default) or ``projector`` (``method.project``,
    e.g. the 128-d head output the MoCo CIFAR demo's kNN monitor votes with)."""

    k: int = 200
    temperature: float = 0.1
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    random_init: bool = False
    features: Literal["backbone", "projector"] = "backbone"


@MONITORS.register("knn", config=KNNOptions)
class KNNMonitor(Monitor):
    """Reports ``knn_top1``: weighted kNN accuracy of the backbone features (or of the projector
    output, ``features: projector``)."""

    options: KNNOptions

    def _accuracy(self, method: SSLMethod) -> float:
        data = self.context.data
        if data.test is None:
            return float("nan")
        encode = method.project if self.options.features == "projector" else method.embed
        bank, bank_labels = split_features(method, data.train, self.context, self.options.max_train_samples, encode)
        query, query_labels = split_features(method, data.test, self.context, self.options.max_test_samples, encode)
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
            embedding = gather_no_grad(embedding)  # the global batch's statistic, whatever the world size
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


@dataclass
class OnlineProbeOptions:
    """Online linear probe (SimCLR's ``lineareval_while_pretraining``, BYOL's online classifier): a
    linear classifier on the detached backbone features of view 0 (the method's ``features``) and
    the batch labels, trained after every SSL step with its own SGD optimizer (``lr``, ``momentum``,
    ``weight_decay``; weights N(0, 0.01) drawn from ``seed``, bias 0). ``batch_norm``: standardize
    the features with a BatchNorm without affine parameters first, so one ``lr`` suits any feature
    scale. ``evaluate_test``: also measure it on the test split in eval mode (``max_test_samples``).
    Unlabeled pretraining images (label -1: STL-10's ``train+unlabeled``) count in neither its loss
    nor its accuracy."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_norm: bool = True
    evaluate_test: bool = True
    max_test_samples: Optional[int] = None
    seed: int = 0


@MONITORS.register("online_probe", config=OnlineProbeOptions)
class OnlineProbeMonitor(Monitor):
    """Reports ``online_probe_train_top1`` and ``online_probe_train_loss`` (training batches since
    the last evaluation, each measured before its update) and ``online_probe_top1`` (test split).

    It only sees detached tensors after the optimizer step and draws no global random numbers, so
    the SSL gradients and the run's random stream are the same with or without it. Under torchrun its
    gradients are averaged over processes, so its weights stay the same on every process (its
    BatchNorm statistics and training accuracy are each process's own; the main process's probe is
    evaluated and checkpointed). Its weights, statistics and optimizer state are in the checkpoint,
    so a resumed one-process run continues it exactly."""

    options: OnlineProbeOptions

    def __init__(self, options: Any, context: MonitorContext) -> None:
        super().__init__(options, context)
        self.num_classes = len(context.data.classes)
        self.classifier: Optional[LinearClassifier] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        device = context.device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        self.steps = 0

    def _build(self, feature_dim: int) -> None:
        generator = torch.Generator().manual_seed(self.options.seed)
        classifier = LinearClassifier(feature_dim, self.num_classes, self.options.batch_norm, generator, norm_momentum=0.1)
        self.classifier = classifier.to(self.context.device)
        self.optimizer = torch.optim.SGD(
            self.classifier.parameters(), lr=self.options.lr, momentum=self.options.momentum, weight_decay=self.options.weight_decay
        )

    def on_step(self, batch: Batch, outputs: dict[str, Tensor]) -> None:
        features = outputs.get("features")
        if features is None or batch.labels is None:
            return
        features = features.detach().float()
        if self.classifier is None:
            self._build(features.shape[1])
        assert self.classifier is not None and self.optimizer is not None
        self.classifier.train()
        labeled = batch.labels >= 0  # unlabeled pretraining images (STL-10's) carry -1
        with torch.enable_grad():
            logits = self.classifier(features)
            losses = F.cross_entropy(logits, batch.labels.clamp(min=0), reduction="none")
            loss = (losses * labeled).sum() / labeled.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_distributed():
            for p in self.classifier.parameters():
                all_reduce_sum(p.grad).div_(world_size())
        self.optimizer.step()
        self.loss_sum += loss.detach().double()
        self.correct += ((logits.detach().argmax(dim=1) == batch.labels) & labeled).sum()
        self.seen += labeled.sum()
        self.steps += 1

    @torch.no_grad()
    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.steps:
            results["online_probe_train_top1"] = float(self.correct) / max(1, int(self.seen))
            results["online_probe_train_loss"] = float(self.loss_sum) / self.steps
            self.loss_sum.zero_()
            self.correct.zero_()
            self.seen.zero_()
            self.steps = 0
        test = self.context.data.test
        if self.options.evaluate_test and self.classifier is not None and test is not None:
            features, labels = split_features(method, test, self.context, self.options.max_test_samples)
            self.classifier.eval()
            predictions = self.classifier(features).argmax(dim=1)
            results["online_probe_top1"] = float((predictions == labels).float().mean())
        return results

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": int(self.seen), "steps": self.steps,
        }
        if self.classifier is not None and self.optimizer is not None:
            state["classifier"] = {k: v.cpu() for k, v in self.classifier.state_dict().items()}
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum.copy_(state["loss_sum"])
        self.correct.copy_(state["correct"])
        self.seen.fill_(int(state["seen"]))
        self.steps = int(state["steps"])
        if "classifier" in state:
            self._build(int(state["classifier"]["linear.weight"].shape[1]))
            assert self.classifier is not None and self.optimizer is not None
            self.classifier.load_state_dict(state["classifier"])
            self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class DiagnosticsOptions:
    """Representation diagnostics (:mod:`siamssl.eval.diagnostics`) of the model in eval mode on
    ``max_samples`` test images (train images when there is no test split), for the backbone
    features (``feat_*``) and, for methods with ``project``, the projector output (``emb_*``):
    ``std`` (mean per-channel std of the l2-normalized outputs) and ``std_x_sqrt_d`` (about 1 when
    spread uniformly, 0 at collapse), ``rankme`` (effective rank), ``uniformity`` (exponent ``t``) and,
    with ``alignment: true``, ``alignment`` (exponent ``alpha``) of two augmented views of each image
    (SimSiam's CIFAR recipe at the run's crop size, seeded by ``seed``). ``random_init``: also
    measure the untrained model (``*_random_init``)."""

    max_samples: Optional[int] = 1000
    alignment: bool = True
    alpha: float = 2.0
    t: float = 2.0
    seed: int = 0
    random_init: bool = False


@MONITORS.register("diagnostics", config=DiagnosticsOptions)
class DiagnosticsMonitor(Monitor):
    """Reports the representation diagnostics (see :class:`DiagnosticsOptions`) at every evaluation."""

    options: DiagnosticsOptions

    def _measure(self, method: SSLMethod) -> dict[str, float]:
        data, context, options = self.context.data, self.context, self.options
        scalars, _ = measure_representation(
            method, data.test if data.test is not None else data.train, context.mean, context.std, context.device,
            context.crop_size, context.batch_size, options.max_samples, options.alignment, options.alpha, options.t,
            options.seed, context.num_workers,
        )
        return scalars

    def on_train_start(self, method: SSLMethod) -> dict[str, float]:
        if not self.options.random_init:
            return {}
        return {f"{k}_random_init": v for k, v in self._measure(method).items()}

    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        return self._measure(method)
