"""Monitors: plug-ins that watch training and report numbers, registered by name.

A monitor sees every training step's outputs (``on_step``, cheap, no host synchronization), is
evaluated every ``eval.every_n_epochs`` epochs (``evaluate``) and may measure the untrained model
once (``on_train_start``). Its options are the ``eval.<name>`` config section; its state goes into
checkpoints. Adding one needs no change to the trainer: register it and list it in ``eval.monitors``.

Under ``torchrun`` every hook runs on every rank. ``on_step`` accumulates on its own rank and
makes no collective call (the online probe's one gradient all-reduce is the exception: its weights
must stay equal); ``evaluate`` and ``on_train_start`` split their work over the ranks
(:mod:`siamssl.eval.sharding`) and reduce what they accumulated, so every rank returns the same
numbers; the main process logs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from siamssl.data.datasets import ImageSplit, LabeledImages
from siamssl.data.loader import eval_batches
from siamssl.distributed import all_reduce_sum, is_distributed, world_size
from siamssl.eval.features import measure_representation
from siamssl.eval.knn import extract_features, knn_scores
from siamssl.eval.linear import LinearClassifier
from siamssl.eval.sharding import gather_rows, shard_split
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
    #: the training step's autocast dtype (None: float32); evaluations embed under it too
    autocast_dtype: Optional[torch.dtype] = None


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
    method: SSLMethod,
    split: ImageSplit,
    context: MonitorContext,
    limit: Optional[int] = None,
    encode: Optional[Callable[[Tensor], Tensor]] = None,
    gather: bool = True,
    dtype: torch.dtype = torch.float32,
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """Features of ``encode`` (default ``method.embed``) on a split (``limit`` of its samples), in
    ``dtype`` (l2-normalized in float32 first with ``normalize``), with the model in eval mode and
    the run's autocast. Under torchrun each rank embeds its slice of the samples; ``gather``: every
    rank gets all rows (in split order), else only its slice."""
    was_training = method.training
    method.eval()
    try:
        subset = split.subset(limit)
        batches = eval_batches(
            shard_split(subset), context.batch_size, context.mean, context.std,
            context.device, context.crop_size, context.num_workers,
        )
        encode = encode or method.embed
        embed = (lambda images: F.normalize(encode(images).float(), dim=1)) if normalize else encode
        features, labels = extract_features(embed, batches, context.autocast_dtype, dtype)
        if gather:
            features, labels = gather_rows(features, len(subset)), gather_rows(labels, len(subset))
        return features, labels
    finally:
        method.train(was_training)


def global_mean(correct: Tensor, count: int) -> float:
    """``Σ correct / Σ count`` over ranks, in one all-reduce (the local ratio without a process group)."""
    totals = torch.stack([correct.double(), torch.tensor(float(count), dtype=torch.float64, device=correct.device)])
    totals = all_reduce_sum(totals)
    return float(totals[0] / totals[1].clamp_min(1.0))


@dataclass
class KNNOptions:
    """Weighted kNN monitor (InstDisc protocol): ``k`` neighbours, temperature ``temperature``, the
    train split (``max_train_samples`` of it) as memory bank and the test split as queries.
    ``random_init``: also measure the untrained encoder (``knn_top1_random_init``).
    ``features``: ``backbone`` (``method.embed``, the default) or ``projector`` (``method.project``,
    e.g. the 128-d head output the MoCo CIFAR demo's kNN monitor votes with).
    ``bank_dtype``: the memory bank's storage dtype (similarities are float32 either way);
    ``auto`` is float16 on GPUs (half the memory of a 1.28M-image ImageNet bank; top-1 within 0.3
    points of float32 as measured in docs/DISTRIBUTED.md) and float32 on the CPU."""

    k: int = 200
    temperature: float = 0.1
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    random_init: bool = False
    features: Literal["backbone", "projector"] = "backbone"
    bank_dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


_BANK_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@MONITORS.register("knn", config=KNNOptions)
class KNNMonitor(Monitor):
    """Reports ``knn_top1``: weighted kNN accuracy of the backbone features (or of the projector
    output, ``features: projector``).

    Under torchrun each rank embeds its slice of the train split; the slices are gathered so that
    every rank holds the whole bank, l2-normalized in ``bank_dtype``; each rank then classifies its
    own slice of the test split and one all-reduce sums the correct answers."""

    options: KNNOptions

    def bank_dtype(self) -> torch.dtype:
        if self.options.bank_dtype == "auto":
            return torch.float16 if self.context.device.type == "cuda" else torch.float32
        return _BANK_DTYPES[self.options.bank_dtype]

    def _accuracy(self, method: SSLMethod) -> float:
        data = self.context.data
        if data.test is None:
            return float("nan")
        encode = method.project if self.options.features == "projector" else method.embed
        dtype = self.bank_dtype()
        # normalized batch by batch in float32 before the cast: no float32 copy of the whole bank
        bank, bank_labels = split_features(method, data.train, self.context, self.options.max_train_samples, encode,
                                           dtype=dtype, normalize=True)
        query, query_labels = split_features(method, data.test, self.context, self.options.max_test_samples, encode, gather=False)
        k = self.options.k
        scores = knn_scores(query, bank, bank_labels, len(data.classes), [k], self.options.temperature, bank_normalized=True)[k]
        return global_mean((scores.argmax(dim=1) == query_labels).sum(), int(query_labels.shape[0]))

    def on_train_start(self, method: SSLMethod) -> dict[str, float]:
        return {"knn_top1_random_init": self._accuracy(method)} if self.options.random_init else {}

    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        return {"knn_top1": self._accuracy(method)}


@MONITORS.register("embedding_std")
class EmbeddingStdMonitor(Monitor):
    """Reports ``z_std``: the per-channel std of the l2-normalized projector output, averaged over
    channels and over the steps since the last evaluation (SimSiam, Fig. 2): about 1/√d when the
    output is healthy, 0 at collapse. Uses the ``embedding`` the method returns.

    Each rank measures the std over its own batch at every step, without any collective, and the
    evaluation averages over steps and ranks in one all-reduce. Under torchrun the value is thus
    the mean over ranks of the per-rank-batch std rather than the std of the global batch: the two
    differ only by the spread of the ranks' batch means, O(1/B) of the variance for a per-rank
    batch B (below 1% from B = 64), and both are 0 exactly at collapse."""

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
        # the step count is the same on every rank, so the mean over ranks of the local means is one sum
        totals = all_reduce_sum(torch.stack([self.total, torch.tensor(float(self.count), dtype=torch.float64, device=self.total.device)]))
        self.total.zero_()
        self.count = 0
        if float(totals[1]) == 0.0:
            return {}
        return {"z_std": float(totals[0] / totals[1])}

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
    gradients are averaged over processes in one flattened all-reduce per step (its only per-step
    collective), so its weights stay the same on every process and equal those of one process on
    the global batch (without ``batch_norm``; with it, each process standardizes by its own batch).
    Training accuracy and loss are accumulated per process; each evaluation sums them over
    processes and averages the BatchNorm running statistics, in one all-reduce, then each process
    classifies its slice of the test split. The main process's probe is checkpointed. Its weights,
    statistics and optimizer state are in the checkpoint, so a resumed one-process run continues it
    exactly."""

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
            self._average_gradients()
        self.optimizer.step()
        self.loss_sum += loss.detach().double()
        self.correct += ((logits.detach().argmax(dim=1) == batch.labels) & labeled).sum()
        self.seen += labeled.sum()
        self.steps += 1

    @torch.no_grad()
    def _average_gradients(self) -> None:
        """The mean over ranks of every gradient of the probe, in one all-reduce of one flat buffer."""
        assert self.classifier is not None
        grads = [p.grad for p in self.classifier.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce_sum(flat).div_(world_size())
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    @torch.no_grad()
    def _reduce_training_statistics(self) -> tuple[float, float, float, float]:
        """(loss sum, correct, seen, steps) summed over ranks, with the probe's BatchNorm running
        statistics averaged over ranks on the way (one all-reduce)."""
        device = self.loss_sum.device
        counters = torch.stack([self.loss_sum, self.correct.double(), self.seen.double(),
                                torch.tensor(float(self.steps), dtype=torch.float64, device=device)])
        norm = self.classifier.norm if self.classifier is not None else None
        statistics = [norm.running_mean, norm.running_var] if isinstance(norm, torch.nn.BatchNorm1d) else []
        if not is_distributed():
            return tuple(counters.tolist())  # type: ignore[return-value]
        flat = torch.cat([counters] + [b.double() for b in statistics])
        all_reduce_sum(flat)
        offset = 4
        for buffer in statistics:
            buffer.copy_((flat[offset : offset + buffer.numel()] / world_size()).to(buffer.dtype))
            offset += buffer.numel()
        return tuple(flat[:4].tolist())  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        results: dict[str, float] = {}
        loss_sum, correct, seen, steps = self._reduce_training_statistics()
        if steps:
            results["online_probe_train_top1"] = correct / max(1.0, seen)
            results["online_probe_train_loss"] = loss_sum / steps
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen.zero_()
        self.steps = 0
        test = self.context.data.test
        if self.options.evaluate_test and self.classifier is not None and test is not None:
            features, labels = split_features(method, test, self.context, self.options.max_test_samples, gather=False)
            self.classifier.eval()
            predictions = self.classifier(features).argmax(dim=1)
            results["online_probe_top1"] = global_mean((predictions == labels).sum(), int(labels.shape[0]))
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
            options.seed, context.num_workers, context.autocast_dtype, distributed=True,
        )
        return scalars

    def on_train_start(self, method: SSLMethod) -> dict[str, float]:
        if not self.options.random_init:
            return {}
        return {f"{k}_random_init": v for k, v in self._measure(method).items()}

    def evaluate(self, method: SSLMethod) -> dict[str, float]:
        return self._measure(method)
