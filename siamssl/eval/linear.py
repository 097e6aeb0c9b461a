"""Linear evaluation of a frozen encoder.

``python -m siamssl.eval.linear --checkpoint RUN/ [preset=NAME] [key=value ...] [data.KEY=VALUE ...]``

The encoder runs in eval mode (BatchNorm uses its running statistics, as in every official
``main_lincls``), its features are computed once and cached, and a linear classifier (weights
N(0, 0.01), bias 0, as in the official code) is trained on them, which takes seconds on a CPU. The
papers' protocols are presets (:data:`LINEAR_PRESETS`); any key overrides them. ``augment=true``
trains on random-resized-crop + flip views recomputed every epoch instead (the papers' train
transform; slower: the encoder runs every epoch). Top-1/top-5 on the test split go to
``RUN/linear.json`` (``linear_projector.json`` for projector features, ``…_random_init.json`` for
the untrained encoder).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl.errors import ConfigError

Schedule = Literal["cosine", "step", "constant"]

#: L-BFGS iterations per "epoch" of the full-batch optimizer (``optimizer=lbfgs``).
LBFGS_ITERATIONS_PER_EPOCH = 20

#: The papers' linear-evaluation protocols (METHODS.md §1.8; lr = base_lr × batch_size/256 when
#: ``lr_scaling`` is linear). Every preset sets the same keys, so switching presets never mixes two.
LINEAR_PRESETS: dict[str, dict[str, Any]] = {
    # Fast default for datasets whose features fit in memory (not a paper protocol): L2-regularized
    # logistic regression by full-batch L-BFGS on standardized features, as CLIP's linear probes;
    # it converges whatever the features' scale and conditioning (10 rounds of 20 iterations).
    "fast": dict(optimizer="lbfgs", base_lr=1.0, lr_scaling="none", batch_size=256, epochs=10, weight_decay=1e-4,
                 momentum=0.9, nesterov=False, schedule="constant", milestones=[], batch_norm=True),
    # SimSiam main_lincls.py: SGD + LARC (trust 1e-3, every parameter), 0.1 × bs/256, bs 4096, 90 epochs, wd 0, cosine.
    "simsiam": dict(optimizer="lars", base_lr=0.1, lr_scaling="linear", batch_size=4096, epochs=90, weight_decay=0.0,
                    momentum=0.9, nesterov=False, schedule="cosine", milestones=[], batch_norm=False),
    # MoCo v1/v2 main_lincls.py: SGD lr 30 (not scaled), bs 256, 100 epochs, wd 0, ×0.1 at 60 and 80.
    "moco": dict(optimizer="sgd", base_lr=30.0, lr_scaling="none", batch_size=256, epochs=100, weight_decay=0.0,
                 momentum=0.9, nesterov=False, schedule="step", milestones=[60, 80], batch_norm=False),
    # MoCo v3 main_lincls.py (ResNet-50): SGD 0.1 × bs/256, bs 1024, 90 epochs, wd 0, cosine.
    "mocov3": dict(optimizer="sgd", base_lr=0.1, lr_scaling="linear", batch_size=1024, epochs=90, weight_decay=0.0,
                   momentum=0.9, nesterov=False, schedule="cosine", milestones=[], batch_norm=False),
    # BYOL configs/eval.py: SGD Nesterov 0.2 × bs/256, bs 4096, 80 epochs, no weight decay, cosine.
    "byol": dict(optimizer="sgd", base_lr=0.2, lr_scaling="linear", batch_size=4096, epochs=80, weight_decay=0.0,
                 momentum=0.9, nesterov=True, schedule="cosine", milestones=[], batch_norm=False),
    # SimCLR README (ImageNet): momentum (Nesterov) 0.1 × bs/256, bs 4096, 90 epochs, wd 1e-6, cosine.
    "simclr": dict(optimizer="sgd", base_lr=0.1, lr_scaling="linear", batch_size=4096, epochs=90, weight_decay=1e-6,
                   momentum=0.9, nesterov=True, schedule="cosine", milestones=[], batch_norm=False),
    # SwAV eval_linear.py: SGD lr 0.3 (absolute), bs 256, 100 epochs, wd 1e-6, cosine.
    "swav": dict(optimizer="sgd", base_lr=0.3, lr_scaling="none", batch_size=256, epochs=100, weight_decay=1e-6,
                 momentum=0.9, nesterov=False, schedule="cosine", milestones=[], batch_norm=False),
    # DINO eval_linear.py: SGD 0.001 × bs/256 (the ViT default; its ResNet-50 log uses lr 0.3), bs 1024, 100 epochs, wd 0.
    "dino": dict(optimizer="sgd", base_lr=0.001, lr_scaling="linear", batch_size=1024, epochs=100, weight_decay=0.0,
                 momentum=0.9, nesterov=False, schedule="cosine", milestones=[], batch_norm=False),
    # Barlow Twins evaluate.py: classifier lr 0.3, bs 256, 100 epochs, wd 1e-6, cosine.
    "barlow": dict(optimizer="sgd", base_lr=0.3, lr_scaling="none", batch_size=256, epochs=100, weight_decay=1e-6,
                   momentum=0.9, nesterov=False, schedule="cosine", milestones=[], batch_norm=False),
    # VICReg README: head lr 0.02 (the code's default is 0.3), bs 256, 100 epochs, wd 1e-6, cosine.
    "vicreg": dict(optimizer="sgd", base_lr=0.02, lr_scaling="none", batch_size=256, epochs=100, weight_decay=1e-6,
                   momentum=0.9, nesterov=False, schedule="cosine", milestones=[], batch_norm=False),
}


@dataclass
class LinearOptions:
    """Options of the linear probe (``key=value`` on the command line).

    preset: the protocol whose values are the defaults of the next keys (:data:`LINEAR_PRESETS`).
    optimizer: ``sgd``, ``lars`` (trust ratio on every parameter, as apex LARC in SimSiam's code),
    ``adamw``, or ``lbfgs`` (full batch of the cached features, 20 iterations per epoch with a strong
    Wolfe line search; ``weight_decay`` is then the L2 penalty (λ/2)‖W‖² of the weights).
    base_lr, lr_scaling: the peak lr is base_lr × batch_size/256 (``linear``) or base_lr (``none``).
    schedule: ``cosine`` (to 0, updated per epoch as in the official code), ``step`` (× ``gamma`` at
    each epoch of ``milestones``) or ``constant``. batch_norm: a BatchNorm without affine parameters
    before the classifier (standardizes the features; MAE's trick, not in the SSL papers' protocols).
    features: ``backbone`` (the standard) or ``projector``. augment: train on random-resized-crop +
    flip views recomputed every epoch instead of cached center features. max_train_samples /
    max_test_samples: fixed random subsets. feature_batch_size: batch of the frozen forward passes.
    cache: keep the frozen features in RUN/eval_cache. random_init: evaluate the untrained encoder
    (the run's seed) instead of the checkpoint. output: results file (default RUN/linear[_projector][_random_init].json).
    """

    preset: str = "fast"
    optimizer: Literal["sgd", "lars", "adamw", "lbfgs"] = "lbfgs"
    base_lr: float = 1.0
    lr_scaling: Literal["linear", "none"] = "none"
    batch_size: int = 256
    epochs: int = 10
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    schedule: Schedule = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    batch_norm: bool = True
    features: Literal["backbone", "projector"] = "backbone"
    augment: bool = False
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    feature_batch_size: int = 256
    cache: bool = True
    random_init: bool = False
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    output: Optional[str] = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.base_lr


def linear_options(preset: str = "fast", **overrides: Any) -> LinearOptions:
    """The options of a preset, with keyword overrides: ``linear_options("moco", epochs=10)``."""
    if preset not in LINEAR_PRESETS:
        from siamssl.registry import unknown_name_message

        raise ConfigError(unknown_name_message("preset", preset, list(LINEAR_PRESETS)))
    return LinearOptions(**{**LINEAR_PRESETS[preset], "preset": preset, **overrides})


def learning_rate(options: LinearOptions, epoch: int) -> float:
    """The rate of ``epoch`` (0-based): cosine ``lr·½(1 + cos(π·epoch/epochs))`` as SimSiam's and
    MoCo v3's ``adjust_learning_rate``, step decay as MoCo's, or constant."""
    if options.schedule == "cosine":
        return options.peak_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / options.epochs))
    if options.schedule == "step":
        return options.peak_lr * options.gamma ** sum(epoch >= m for m in options.milestones)
    return options.peak_lr


class LinearClassifier(nn.Module):
    """[BatchNorm1d(affine=False)] + Linear with weights N(0, 0.01) from ``generator`` and bias 0
    (no draw from the global random stream, so the online probe leaves a run's randomness alone)."""

    def __init__(self, feature_dim: int, num_classes: int, batch_norm: bool, generator: torch.Generator,
                 norm_momentum: Optional[float] = None) -> None:
        super().__init__()
        # momentum None: the running statistics are the average over all batches seen, the right
        # estimate for frozen features; the online probe, whose features drift, passes 0.1.
        self.norm = nn.BatchNorm1d(feature_dim, affine=False, momentum=norm_momentum) if batch_norm else nn.Identity()
        # skip_init: nn.Linear's own initialization would draw from the global random stream
        self.linear = torch.nn.utils.skip_init(nn.Linear, feature_dim, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) * 0.01)
            self.linear.bias.zero_()

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.norm(features))


def _lbfgs_closure(classifier: LinearClassifier, optimizer: torch.optim.Optimizer, features: Tensor, labels: Tensor,
                   l2: float) -> Callable[[], Tensor]:
    """Full-batch cross-entropy + (l2/2)·‖W‖² (the bias is not penalized), for L-BFGS."""

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(classifier(features), labels)
        if l2:
            loss = loss + 0.5 * l2 * classifier.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    return closure


def _optimizer(classifier: nn.Module, options: LinearOptions) -> torch.optim.Optimizer:
    if options.optimizer == "lars":
        from siamssl.optim import LARS

        return LARS(classifier.parameters(), lr=options.peak_lr, momentum=options.momentum, weight_decay=options.weight_decay)
    if options.optimizer == "lbfgs":
        return torch.optim.LBFGS(classifier.parameters(), lr=options.peak_lr, max_iter=LBFGS_ITERATIONS_PER_EPOCH,
                                 history_size=20, line_search_fn="strong_wolfe")
    if options.optimizer == "adamw":
        return torch.optim.AdamW(classifier.parameters(), lr=options.peak_lr, weight_decay=options.weight_decay)
    return torch.optim.SGD(
        classifier.parameters(), lr=options.peak_lr, momentum=options.momentum, nesterov=options.nesterov,
        weight_decay=options.weight_decay,
    )


@torch.no_grad()
def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits (k clipped to the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return {k: float(hits[:, : min(k, logits.shape[1])].any(dim=1).float().mean()) for k in ks}


def cached_batches(features: Tensor, labels: Tensor, batch_size: int, seed: int) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """Epoch → shuffled minibatches of cached features (the order depends only on seed and epoch)."""

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(features.device)
        for start in range(0, features.shape[0], batch_size):
            index = order[start : start + batch_size]
            yield features[index], labels[index]

    return batches


def train_linear_classifier(
    train_batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]],
    feature_dim: int,
    num_classes: int,
    test_features: Tensor,
    test_labels: Tensor,
    options: LinearOptions,
    log: Optional[Callable[[str], None]] = None,
) -> tuple[LinearClassifier, dict[str, Any]]:
    """Train a linear classifier with ``options``' protocol on ``train_batches(epoch)`` and measure
    it on the test features after every epoch. Returns the classifier and the results (``top1``,
    ``top5`` and ``train_top1`` of the last epoch, ``best_top1`` over epochs, per-epoch ``history``)."""
    device = test_features.device
    classifier = LinearClassifier(feature_dim, num_classes, options.batch_norm, torch.Generator().manual_seed(options.seed)).to(device)
    optimizer = _optimizer(classifier, options)
    history = []
    full_batch = None
    if options.optimizer == "lbfgs":  # one batch of all the (cached) training features
        parts = list(train_batches(0))
        full_batch = (torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]))
    for epoch in range(options.epochs):
        lr = learning_rate(options, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        classifier.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = steps = 0
        if full_batch is not None:
            features, labels = full_batch
            optimizer.step(_lbfgs_closure(classifier, optimizer, features, labels, options.weight_decay))
            with torch.no_grad():
                logits = classifier(features)
            loss_sum += F.cross_entropy(logits, labels).double()
            correct += (logits.argmax(dim=1) == labels).sum()
            seen, steps = labels.shape[0], 1
        for features, labels in train_batches(epoch) if full_batch is None else ():
            logits = classifier(features)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += labels.shape[0]
            steps += 1
        if steps == 0:
            raise ConfigError("the linear probe got no training batch (fewer training samples than batch_size with augment=true?)")
        classifier.eval()
        with torch.no_grad():
            test = topk_accuracy(classifier(test_features), test_labels)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / steps, "train_top1": float(correct) / seen,
                  "test_top1": test[1], "test_top5": test[5]}
        if not math.isfinite(record["train_loss"]):
            raise ConfigError(f"the linear probe diverged at epoch {epoch + 1} (loss {record['train_loss']}); lower base_lr")
        history.append(record)
        if log is not None and ((epoch + 1) % max(1, options.epochs // 10) == 0 or epoch == 0):
            log(f"epoch {epoch + 1}/{options.epochs}: lr {lr:.4g}, loss {record['train_loss']:.4f}, "
                f"train top-1 {record['train_top1']:.4f}, test top-1 {record['test_top1']:.4f}")
    last = history[-1]
    results = {"top1": last["test_top1"], "top5": last["test_top5"], "train_top1": last["train_top1"],
               "best_top1": max(r["test_top1"] for r in history), "history": history}
    return classifier, results


def augmented_batches(run: Any, options: LinearOptions) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """Epoch → frozen features of random-resized-crop (0.08-1) + flip views of the train split, each
    sample's crop seeded by (seed, epoch, position) as in pretraining."""
    from siamssl.data.augment import view_transforms
    from siamssl.data.config import AugmentConfig
    from siamssl.data.loader import TrainLoader
    from siamssl.eval.runs import embedding_function

    recipe = AugmentConfig(views=1, crop_size=run.crop_size, crop_scale=(0.08, 1.0), jitter_p=0.0, grayscale_p=0.0)
    split = run.split("train").subset(options.max_train_samples)
    if options.batch_size > len(split):
        raise ConfigError(f"batch_size={options.batch_size} is larger than the training set ({len(split)} images) with augment=true")
    loader = TrainLoader(split, view_transforms(recipe, run.mean, run.std), options.batch_size, options.seed,
                         options.num_workers, device=run.device)
    embed = embedding_function(run.method, options.features)

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in loader.batches(epoch):
            with torch.no_grad():
                features = embed(batch.views[0]).float()
            assert batch.labels is not None
            yield features, batch.labels

    return batches


def evaluate_linear(checkpoint: str | Path, options: LinearOptions, data_overrides: list[str] = (), quiet: bool = False) -> dict[str, Any]:  # type: ignore[assignment]
    """Run the linear probe on a checkpoint and write its JSON results; returns them."""
    from siamssl.eval.runs import default_output, frozen_features, load_run, write_json

    def log(text: str) -> None:
        if not quiet:
            print(f"siamssl: {text}", file=sys.stderr)

    run = load_run(checkpoint, data_overrides, options.device, options.random_init)
    started = time.perf_counter()
    test_features, test_labels = frozen_features(
        run, "test", options.features, options.max_test_samples, options.feature_batch_size, options.cache, options.num_workers
    )
    if options.augment:
        if options.optimizer == "lbfgs":
            raise ConfigError("augment=true needs a minibatch optimizer (the fast preset's lbfgs works on cached features); pick e.g. preset=moco")
        train_batches = augmented_batches(run, options)
        num_train = len(run.split("train").subset(options.max_train_samples))
    else:
        train_features, train_labels = frozen_features(
            run, "train", options.features, options.max_train_samples, options.feature_batch_size, options.cache, options.num_workers
        )
        train_batches = cached_batches(train_features, train_labels, options.batch_size, options.seed)
        num_train = train_features.shape[0]
    feature_seconds = time.perf_counter() - started
    num_classes = len(run.labeled_data().classes)
    log(f"linear probe ({options.preset}) on {num_train} train / {test_features.shape[0]} test images, "
        f"{test_features.shape[1]}-d {options.features} features{' (random init)' if run.random_init else ''}")
    started = time.perf_counter()
    _, results = train_linear_classifier(train_batches, test_features.shape[1], num_classes, test_features, test_labels, options, log)
    payload = {
        "checkpoint": str(run.checkpoint),
        "random_init": run.random_init,
        "features": options.features,
        "preset": options.preset,
        "top1": results["top1"],
        "top5": results["top5"],
        "best_top1": results["best_top1"],
        "train_top1": results["train_top1"],
        "num_train": num_train,
        "num_test": int(test_features.shape[0]),
        "feature_dim": int(test_features.shape[1]),
        "feature_seconds": round(feature_seconds, 2),
        "train_seconds": round(time.perf_counter() - started, 2),
        "options": asdict(options),
        "history": results["history"],
    }
    output = Path(options.output) if options.output else default_output(run, "linear", options.features)
    write_json(output, payload)
    log(f"linear top-1 {100 * payload['top1']:.2f}%, top-5 {100 * payload['top5']:.2f}%; wrote {output}")
    return payload


def main(argv: Optional[list[str]] = None, prog: str = "python -m siamssl.eval.linear") -> int:
    from siamssl.eval.runs import evaluation_main

    presets = "\n".join(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for name, values in LINEAR_PRESETS.items())
    return evaluation_main(
        argv,
        prog,
        "Linear probe of a frozen encoder on cached features (top-1/top-5 on the test split).",
        LinearOptions,
        evaluate_linear,
        presets=LINEAR_PRESETS,
        epilog="presets (preset=NAME; any key overrides them):\n" + presets
        + "\n\nexample: python -m siamssl.eval.linear --checkpoint runs/simsiam preset=simsiam epochs=30",
    )


if __name__ == "__main__":
    from siamssl.eval.linear import main as _main

    sys.exit(_main())
