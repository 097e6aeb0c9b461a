"""Any registered siamssl method as a PyTorch Lightning ``LightningModule`` (``pip install
"siamssl[lightning]"``).

:class:`SSLModule` runs the method protocol of :class:`siamssl.train.Trainer` inside Lightning's
automatic optimization, step for step:

1. before the forward, the learning rate of every parameter group (``peak × schedule_factor``, fixed
   groups keep theirs) and, with ``optim.weight_decay_end``, the weight decay;
2. ``method(batch, progress)`` → ``loss`` (its other scalars are logged as ``train/<name>``);
3. backward, gradient unscaling (fp16), ``method.on_before_optimizer_step``, then clipping at
   ``optim.grad_clip_norm`` (Lightning calls its ``on_before_optimizer_step`` hook and its clipping in
   this order);
4. the optimizer step, then ``method.on_after_optimizer_step`` (EMA targets, queues, DirectPred).

The optimizer and its parameter groups (lr scale, fixed lr, own weight decay, LARS and weight-decay
exclusion of biases and norms) come from :func:`siamssl.optim.build_optimizer`, the schedules from
:mod:`siamssl.optim`. ``TrainingProgress.step`` is Lightning's ``global_step`` (optimizer steps),
``total_steps`` its ``estimated_stepping_batches`` and an epoch its number of training batches.

Under Lightning's DDP, the methods gather across processes themselves (queues, SimCLR's negatives);
pass ``strategy=DDPStrategy(broadcast_buffers=False)`` as siamssl's trainer does, and
``sync_batchnorm=True`` for the methods whose papers use global BatchNorm statistics
(``type(method).default_sync_bn``).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('siamssl.integrations.lightning needs PyTorch Lightning: pip install "siamssl[lightning]"') from exc

from siamssl.config import Config, OptimConfig
from siamssl.data import LabeledImages, build_dataset, build_train_loader
from siamssl.distributed import rank, world_size
from siamssl.errors import ConfigError
from siamssl.methods import Batch, SSLMethod, TrainingProgress
from siamssl.optim import build_optimizer, peak_learning_rate, schedule_factor, set_learning_rates, set_weight_decays, weight_decay_at
from siamssl.runtime import seed_everything
from siamssl.build import build_run_method

__all__ = ["SSLModule"]


class SSLModule(pl.LightningModule):
    """A siamssl method trained by Lightning with siamssl's optimizer, schedules and step hooks.

    Args:
        method: any built :class:`~siamssl.methods.SSLMethod` (``siamssl.methods.build_method``).
        optim_cfg: the ``optim`` section of a siamssl config (``OptimConfig``).
        global_batch_size: images per optimizer step over all processes, for the linear learning-rate
            scaling (``base_lr × batch / 256``); by default the train DataLoader's ``batch_size`` ×
            processes × ``accumulate_grad_batches``.

    The train DataLoader yields :class:`~siamssl.methods.Batch` objects (views, indices, labels), as
    the one of :meth:`from_config` does; ``forward(images)`` is the method's ``embed``.
    """

    def __init__(self, method: SSLMethod, optim_cfg: OptimConfig, global_batch_size: Optional[int] = None) -> None:
        super().__init__()
        self.method = method
        self.optim_cfg = optim_cfg
        self.global_batch_size = global_batch_size
        self.planned_total_steps: Optional[int] = None  # set by from_config: what the method was built for
        self._data: Optional[LabeledImages] = None
        self._config: Optional[Config] = None
        self._total_steps = 0
        self._steps_per_epoch = 1
        self._progress: Optional[TrainingProgress] = None

    @classmethod
    def from_config(cls, cfg: Config) -> "SSLModule":
        """The method, optimizer and data of a siamssl config, built as :class:`siamssl.train.Trainer`
        builds them (same seed, same initial weights, same batches); pass
        ``max_steps=module.planned_total_steps`` to the Lightning ``Trainer``. The ``trainer``
        section's loop options (device, precision, checkpoints) are Lightning's to set."""
        seed_everything(cfg.seed)
        data = build_dataset(cfg.data)
        steps_per_epoch = build_train_loader(data.pretraining_split(), cfg.data, data.mean, data.std, cfg.seed).steps_per_epoch
        total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch
        module = cls(build_run_method(cfg, data, steps_per_epoch, total_steps), cfg.optim, cfg.data.batch_size)
        module.planned_total_steps = total_steps
        module._data, module._config = data, cfg
        return module

    # ---------------------------------------------------------------------------------- Lightning

    def forward(self, images: Tensor) -> Tensor:
        """The representation evaluated downstream (the method's ``embed``: backbone features)."""
        return self.method.embed(images)

    def train_dataloader(self) -> DataLoader:
        """siamssl's deterministic training batches of the config (only with :meth:`from_config`)."""
        if self._config is None or self._data is None:
            raise ConfigError("SSLModule has no data of its own; pass train_dataloaders to Trainer.fit, or build it with from_config")
        return DataLoader(_EpochBatches(self, self._config, self._data), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        batch_size = self.global_batch_size or self._inferred_global_batch_size()
        peak_lr = peak_learning_rate(self.optim_cfg.base_lr, batch_size, self.optim_cfg.lr_scaling)
        return build_optimizer(self.method.parameter_groups(), self.optim_cfg, peak_lr)

    def on_train_start(self) -> None:
        trainer = self.trainer
        batches = trainer.num_training_batches
        if math.isinf(batches):
            raise ConfigError("SSLModule needs a train DataLoader with a length: the schedule's epochs are counted in its batches")
        self._steps_per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        self._total_steps = int(trainer.estimated_stepping_batches)
        if self.planned_total_steps is not None and self._total_steps != self.planned_total_steps:
            raise ConfigError(
                f"the Lightning Trainer runs {self._total_steps} optimizer steps but the config plans "
                f"{self.planned_total_steps}; pass max_steps=module.planned_total_steps"
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        self._progress = TrainingProgress(step, self._total_steps, self.current_epoch, self._steps_per_epoch)
        for optimizer in self.trainer.optimizers:
            set_learning_rates(optimizer, schedule_factor(step, self._total_steps, self._steps_per_epoch, self.optim_cfg))
            if self.optim_cfg.weight_decay_end is not None:
                set_weight_decays(optimizer, weight_decay_at(step, self._total_steps, self.optim_cfg))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        outputs = self.method(batch, self._progress)
        loss = outputs["loss"]
        scalars = {f"train/{k}": v.detach() for k, v in outputs.items() if k != "loss" and isinstance(v, Tensor) and v.ndim == 0}
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch.index))
        if scalars:
            self.log_dict(scalars, batch_size=len(batch.index))
        scheduled = [g["lr"] for g in self.trainer.optimizers[0].param_groups if not g["fixed_lr"]]
        if scheduled:
            self.log("train/lr", max(scheduled), batch_size=len(batch.index))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.method.on_before_optimizer_step(self._progress)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: Optional[str] = None
    ) -> None:
        if not self.optim_cfg.grad_clip_norm:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if gradient_clip_val:
            raise ConfigError("clip either with optim.grad_clip_norm or with Trainer(gradient_clip_val=...), not both")
        nn.utils.clip_grad_norm_(self.method.parameters(), self.optim_cfg.grad_clip_norm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.method.on_after_optimizer_step(self._progress)

    # ---------------------------------------------------------------------------------- internals

    def _inferred_global_batch_size(self) -> int:
        if self.optim_cfg.lr_scaling == "none":
            return 256  # the peak rate is base_lr whatever the batch
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 - sets up the train DataLoader
        loader = trainer.train_dataloader
        batch_size = getattr(loader, "batch_size", None)
        if not isinstance(batch_size, int):
            raise ConfigError(
                "optim.lr_scaling=linear needs the global batch size: pass SSLModule(..., global_batch_size=N) "
                "(the train DataLoader has no batch_size to infer it from)"
            )
        return batch_size * trainer.world_size * trainer.accumulate_grad_batches


class _EpochBatches(IterableDataset):
    """One pass = one epoch of siamssl's deterministic loader (the epoch Lightning is in), for this
    process's rank; built on first use, when Lightning has set up the process group."""

    def __init__(self, module: SSLModule, cfg: Config, data: LabeledImages) -> None:
        self.module, self.cfg, self.data = module, cfg, data
        self.steps_per_epoch = build_train_loader(data.pretraining_split(), cfg.data, data.mean, data.std, cfg.seed).steps_per_epoch
        self._loader: Any = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        if self._loader is None:
            self._loader = build_train_loader(
                self.data.pretraining_split(), self.cfg.data, self.data.mean, self.data.std, self.cfg.seed, rank(), world_size()
            )
        yield from self._loader.batches(self.module.current_epoch)
