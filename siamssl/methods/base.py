"""The protocol between the trainer and every self-supervised method.

A method is an ``nn.Module`` built from a backbone, heads and a loss (plus, where the method has
them, a momentum target, a queue or prototypes). The trainer knows only this interface:

* ``forward(batch, progress) -> dict`` with ``"loss"`` (a scalar with gradient) and any number of
  detached scalars to log. Two optional tensors feed the monitors: ``"features"`` (detached backbone
  features of the first view, for the online probe) and ``"embedding"`` (detached projector output
  of the first view, for the collapse monitors).
* ``parameter_groups()``: the trainable parameters, each group with its learning-rate rules.
* ``on_before_optimizer_step(progress)``: gradient surgery (frozen prototypes, per-parameter clipping).
* ``on_after_optimizer_step(progress)``: EMA targets, queues, predictor re-estimation.
* ``embed(images)``: the representation evaluated by kNN and linear probes (backbone features).
* ``project(images)`` (optional): the projector's output, for evaluations of the embedding space.
* ``compiled_modules()`` (optional): the networks ``trainer.compile`` compiles. By default the
  ``backbone`` and every child module whose attribute name ends in ``_backbone`` (a momentum
  target, a teacher, a key encoder: ``target_backbone``, ``teacher_backbone``...), so a method
  that follows the naming needs nothing; override it to list others.

Everything a method keeps between steps (queues, centres, moving averages) must be a parameter or a
registered buffer, so that checkpoints capture it and resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from siamssl.errors import ConfigError


@dataclass(frozen=True)
class TrainingProgress:
    """Where training is; passed to the method at every step.

    ``step`` counts optimizer steps already taken (0 at the first step); ``epoch`` is 0-based.
    """

    step: int
    total_steps: int
    epoch: int
    steps_per_epoch: int

    @property
    def fraction(self) -> float:
        """Fraction of training done, in [0, 1) during training."""
        return self.step / max(1, self.total_steps)


@dataclass
class Batch:
    """One training batch: the augmented views, the dataset indices of the samples (memory-bank
    methods use them) and labels (used only by the online probe, never by an SSL loss)."""

    views: list[Tensor]
    index: Tensor
    labels: Optional[Tensor] = None


@dataclass
class ParamGroup:
    """A group of parameters with its learning-rate rules.

    Args:
        lr_scale: multiplies the scheduled learning rate (e.g. Barlow Twins' bias/BN rate).
        fixed_lr: keep the initial (scaled) learning rate, no warmup or decay (SimSiam's predictor).
        weight_decay: overrides the optimizer's weight decay for this group.
        exclude_from_lars: never adapt this group's rate with LARS (1-D parameters always are).
    """

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    fixed_lr: bool = False
    weight_decay: Optional[float] = None
    exclude_from_lars: bool = False


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know about the run when it is built."""

    num_samples: int
    global_batch_size: int
    steps_per_epoch: int
    total_steps: int
    image_size: int
    make_backbone: Optional[Callable[..., "tuple[nn.Module, int]"]] = field(default=None, repr=False)
    # Per-channel mean/std the training views were normalized with (what ``(x - mean) / std`` used),
    # for methods that must undo the normalization, e.g. CMC converting RGB views to Lab.
    image_mean: Optional[tuple[float, ...]] = None
    image_std: Optional[tuple[float, ...]] = None


class SSLMethod(nn.Module):
    """Base class with the defaults of the protocol; subclasses implement ``forward``."""

    backbone: nn.Module
    feature_dim: int
    #: Whether the paper's multi-GPU recipe computes BatchNorm statistics over the global batch
    #: (SimSiam, BYOL, SimCLR, MoCo v3, Barlow Twins, VICReg, SwAV, DINO do; MoCo v1/v2 use per-GPU BN
    #: with Shuffle-BN instead; InstDisc and CMC per-GPU BN). The trainer converts to SyncBatchNorm
    #: under torchrun when this is True, unless ``trainer.sync_bn`` says otherwise.
    default_sync_bn: ClassVar[bool] = True

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def parameter_groups(self) -> list[ParamGroup]:
        """By default, one group with every trainable parameter."""
        return [ParamGroup("all", [p for p in self.parameters() if p.requires_grad])]

    def on_before_optimizer_step(self, progress: TrainingProgress) -> None:
        """Called after backward (and gradient unscaling), before the optimizer step."""

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """Called after the optimizer step."""

    def compiled_modules(self) -> list[nn.Module]:
        """The networks worth ``torch.compile``: the backbone and every child named ``*_backbone``
        (momentum targets, teachers), each once. Heads are left eager (small, and their shapes follow
        the backbone's)."""
        modules: list[nn.Module] = []
        for name, child in self.named_children():
            if (name == "backbone" or name.endswith("_backbone")) and all(child is not m for m in modules):
                modules.append(child)
        return modules

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Representation used for evaluation: the backbone's features."""
        return self.backbone(images)

    @torch.no_grad()
    def project(self, images: Tensor) -> Tensor:
        """The projector's output (the space the loss sees), for projector-feature evaluations.
        By default ``self.projector(self.backbone(images))`` for methods with a ``projector``."""
        projector = getattr(self, "projector", None)
        if not isinstance(projector, nn.Module):
            raise ConfigError(f"method {type(self).__name__} has no projector; evaluate backbone features")
        return projector(self.backbone(images))


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require a gradient."""
    return [p for p in module.parameters() if p.requires_grad]
