"""The training loop. It talks to methods only through :class:`siamssl.methods.SSLMethod` and to
monitors only through :class:`siamssl.eval.monitors.Monitor`; both are found by name."""

from __future__ import annotations

import inspect
import json
import math
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from siamssl.build import build_run_method
from siamssl.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_atomic
from siamssl.config import Config
from siamssl.data import build_dataset, build_train_loader
from siamssl.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    convert_sync_batchnorm,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)
from siamssl.errors import ConfigError, SiamSSLError, TrainingDiverged
from siamssl.eval.monitors import MONITORS, Monitor, MonitorContext
from siamssl.loggers import RunLoggers, build_loggers, check_loggers_available
from siamssl.methods import Batch, TrainingProgress
from siamssl.optim import (
    build_optimizer,
    peak_learning_rate,
    schedule_factor,
    set_learning_rates,
    set_weight_decays,
    weight_decay_at,
)
from siamssl.runtime import (
    configure_tf32,
    init_distributed,
    local_main_first,
    message,
    process_group,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Buffers are not overwritten with rank 0's at every forward: with SyncBatchNorm the running
# statistics are already equal on every rank, and queues/centres are updated from gathered tensors.
# (Newer torch spells the option forward_sync_buffers; both still sync once at construction.)
_NO_BUFFER_BROADCAST = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


class Interrupted(SiamSSLError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""


class Trainer:
    """Pretrain ``cfg.method`` on ``cfg.data``; ``fit()`` returns the summary."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        init_distributed(cfg.trainer.device, cfg.trainer.dist_timeout_minutes)
        self.device = resolve_device(cfg.trainer.device)
        self.precision = resolve_precision(cfg.trainer.precision, self.device)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs a GPU; use trainer.precision=bf16 on the CPU")
        self.autocast_dtype = _AMP_DTYPES.get(self.precision)
        configure_tf32(self.device, cfg.trainer.tf32)
        self.run_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        resume_from = self._resume_path()
        check_loggers_available(cfg.trainer.loggers)
        if is_distributed():  # every rank decides on the run directory before rank 0 writes to it
            dist.barrier()
        seed_everything(cfg.seed)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once

        with local_main_first():  # one download / decoding per machine; the other ranks read its cache
            self.data = build_dataset(cfg.data)
        augment = cfg.data.augment
        self.loader = build_train_loader(
            self.data.pretraining_split(), cfg.data, self.data.mean, self.data.std, cfg.seed, rank(), world_size(), self.device
        )
        self.steps_per_epoch = self.loader.steps_per_epoch
        self.total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.method = build_run_method(cfg, self.data, self.steps_per_epoch, self.total_steps).to(self.device)
        self.channels_last = resolve_channels_last(cfg.trainer.channels_last, self.device, self.method)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.sync_bn = cfg.trainer.sync_bn if cfg.trainer.sync_bn is not None else type(self.method).default_sync_bn
        if is_distributed() and self.sync_bn:
            self.method = convert_sync_batchnorm(self.method, self.device)
        if cfg.trainer.compile:
            compile_networks(self.method, cfg.trainer.compile_backend, cfg.trainer.compile_mode)
        self.model: nn.Module = self.method
        if is_distributed():
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None, **_NO_BUFFER_BROADCAST
            )

        peak_lr = peak_learning_rate(cfg.optim.base_lr, cfg.data.batch_size, cfg.optim.lr_scaling)
        self.optimizer = build_optimizer(self.method.parameter_groups(), cfg.optim, peak_lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        monitor_context = MonitorContext(
            self.data, augment.mean or self.data.mean, augment.std or self.data.std, self.device,
            cfg.eval.batch_size, augment.crop_size, cfg.data.num_workers, self.autocast_dtype,
        )
        self.monitors: dict[str, Monitor] = {
            name: MONITORS.get(name)(cfg.monitor_options.get(name), monitor_context) for name in cfg.eval.monitors
        }

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.initial_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.loggers = RunLoggers([])  # fit() opens the configured ones on rank 0
        self._stop_requested = False
        self._stop_agreed = False
        self._checkpoint_due = False
        self._last_save_time = time.monotonic()
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._window: dict[str, Tensor] = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self._throughput: list[float] = []
        self._train_seconds = 0.0
        self._last_checkpoint: Optional[Path] = None

        if resume_from is not None:
            self._load(resume_from)
        self._resumed_at = self.global_step if resume_from is not None else None
        self._prepare_run_dir(resume_from is not None)

    # ------------------------------------------------------------------------------- run directory

    def _resume_path(self) -> Optional[Path]:
        """Decide what the run continues from, refusing to touch an existing run unless told to."""
        resume = self.cfg.trainer.resume
        exists = self.run_dir.exists() and any(self.run_dir.iterdir())
        if isinstance(resume, str):
            return Path(resume)
        if resume:
            path = self.checkpoint_dir / "last.pt"
            if not path.is_file():
                raise ConfigError(f"trainer.resume=true but there is no checkpoint at '{path}'")
            return path
        if exists and not self.cfg.trainer.overwrite:
            raise ConfigError(
                f"output_dir '{self.run_dir}' already holds a run; pass trainer.resume=true to continue it, "
                "trainer.overwrite=true to replace it, or another output_dir"
            )
        return None

    def _prepare_run_dir(self, resumed: bool) -> None:
        if is_main_process():
            if self.cfg.trainer.overwrite and not resumed and self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if is_distributed():
            dist.barrier()

    # -------------------------------------------------------------------------------- checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "monitors": {name: m.state_dict() for name, m in self.monitors.items()},
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "initial_metrics": self.initial_metrics,
            "last_metrics": self.last_metrics,
            "train_seconds": self._train_seconds,
            "log_window": {k: v.cpu() for k, v in self._window.items()},
            "log_window_steps": self._window_steps,
        }

    def _save(self, name: str = "last.pt") -> None:
        self._check_finite()
        if is_main_process():
            path = self.checkpoint_dir / name
            save_atomic(self._state(), path)
            self._last_checkpoint = path
        if is_distributed():
            dist.barrier()
        self._last_save_time = time.monotonic()
        self._checkpoint_due = False

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if state["total_steps"] != self.total_steps:
            raise ConfigError(
                f"the checkpoint was trained for {state['total_steps']} steps but this config asks for "
                f"{self.total_steps}; keep trainer.epochs/trainer.max_steps and data.batch_size as in the run"
            )
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for name, monitor in self.monitors.items():
            if name in state["monitors"]:
                monitor.load_state_dict(state["monitors"][name])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.initial_metrics = dict(state["initial_metrics"])
        self.last_metrics = dict(state["last_metrics"])
        self._train_seconds = float(state["train_seconds"])
        self._window = {k: v.to(self.device) for k, v in state["log_window"].items()}
        self._window_steps = int(state["log_window_steps"])
        self._last_checkpoint = path
        message(f"resumed from {path} at epoch {self.epoch}, step {self.global_step}/{self.total_steps}")

    # ------------------------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to the end (or until interrupted) and return the summary written to ``summary.json``."""
        cfg = self.cfg
        message(
            f"{cfg.method.name} on {cfg.data.dataset}: {len(self.data.pretraining_split())} images, {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps, global batch {cfg.data.batch_size} on {world_size()} process(es)"
            f"{' with SyncBatchNorm' if is_distributed() and self.sync_bn else ''}, "
            f"device {self.device}, {self.precision}{', channels_last' if self.channels_last else ''}"
            f"{', compiled' if cfg.trainer.compile else ''}; run dir {self.run_dir}"
        )
        if is_main_process():
            trainer = cfg.trainer
            self.loggers = build_loggers(
                trainer.loggers, self.run_dir, cfg.to_dict(), {"tensorboard": trainer.tensorboard, "wandb": trainer.wandb},
                resumed_at=self._resumed_at,
            )
        if self.global_step == 0 and not self.initial_metrics:
            self.initial_metrics = self._on_train_start()
        bar = tqdm(
            total=self.total_steps, initial=self.global_step, disable=not (is_main_process() and cfg.trainer.progress_bar),
            dynamic_ncols=True, unit="step", mininterval=1.0,
        )
        with self.loggers, bar, self._signals_handled():
            while self.global_step < self.total_steps:
                epoch = self.epoch
                for batch in self.loader.batches(epoch, self.step_in_epoch):
                    self._train_step(batch, epoch)
                    bar.update(1)
                    at_end = self.global_step >= self.total_steps
                    if self.global_step % cfg.trainer.log_every_steps == 0 or at_end:
                        self._log_window(bar)
                    every = cfg.trainer.checkpoint_every_steps
                    # a checkpoint due by time at an epoch's last step waits for the epoch end, a few lines on
                    due = self._checkpoint_due and self.step_in_epoch < self.steps_per_epoch
                    if not at_end and (due or (every and self.global_step % every == 0)):
                        self._save()
                    if self._stop_agreed if is_distributed() else self._stop_requested:
                        self._interrupt()
                    if at_end:
                        break
                self.epoch, self.step_in_epoch = epoch + 1, 0
                self._end_epoch(epoch, last=self.global_step >= self.total_steps)
            return self._write_summary()

    def _on_train_start(self) -> dict[str, float]:
        results: dict[str, float] = {}
        with _eager_evaluation():  # every rank: the monitors shard their work and reduce the results
            for monitor in self.monitors.values():
                results.update(monitor.on_train_start(self.method))
        if results:
            message("before training: " + _format(results))
        return results

    def _train_step(self, batch: Batch, epoch: int) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        progress = TrainingProgress(self.global_step, self.total_steps, epoch, self.steps_per_epoch)
        set_learning_rates(self.optimizer, schedule_factor(self.global_step, self.total_steps, self.steps_per_epoch, cfg.optim))
        if cfg.optim.weight_decay_end is not None:
            set_weight_decays(self.optimizer, weight_decay_at(self.global_step, self.total_steps, cfg.optim))
        if self.channels_last:
            batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            outputs = self.model(batch, progress)
        loss = outputs["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.method.on_before_optimizer_step(progress)
        if cfg.optim.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_after_optimizer_step(progress)
        for monitor in self.monitors.values():
            monitor.on_step(batch, outputs)
        self._accumulate(loss, outputs)
        self.global_step += 1
        self.step_in_epoch += 1
        self._train_seconds += time.perf_counter() - started

    def _accumulate(self, loss: Tensor, outputs: dict[str, Tensor]) -> None:
        """Sum logged scalars on the device; nothing is read back until the next log line."""
        finite = torch.isfinite(loss.detach())
        self._first_bad_step = torch.where((~finite) & (self._first_bad_step < 0), self.global_step, self._first_bad_step)
        scalars = {"loss": loss.detach()}
        scalars.update({k: v.detach() for k, v in outputs.items() if k != "loss" and isinstance(v, Tensor) and v.ndim == 0})
        for key, value in scalars.items():
            value = value.float()
            self._window[key] = self._window[key] + value if key in self._window else value.clone()
        self._window_steps += 1

    def _check_finite(self) -> None:
        bad = all_reduce_sum((self._first_bad_step >= 0).long()) if is_distributed() else (self._first_bad_step >= 0)
        if bool(bad):
            checkpoint = f"the last good checkpoint is {self._last_checkpoint}" if self._last_checkpoint else "no checkpoint was written"
            raise TrainingDiverged(
                f"the loss became NaN or infinite at step {int(self._first_bad_step) + 1}; training stopped and {checkpoint}. "
                "Lower optim.base_lr, add optim.warmup_epochs, or use trainer.precision=fp32"
            )

    def _log_window(self, bar: tqdm) -> None:
        self._check_finite()
        elapsed = time.perf_counter() - self._window_start
        keys = sorted(self._window)
        values = torch.stack([self._window[k] for k in keys]) / max(1, self._window_steps) if keys else torch.zeros(0)
        if keys and is_distributed():  # the mean of the ranks' losses is the global-batch loss
            values = all_reduce_mean(values)
        values = values.cpu()
        record: dict[str, Any] = {"step": self.global_step, "epoch": self.epoch}
        record.update({k: float(v) for k, v in zip(keys, values)})
        scheduled = [g["lr"] for g in self.optimizer.param_groups if not g["fixed_lr"]] or [g["lr"] for g in self.optimizer.param_groups]
        record["lr"] = max(scheduled)
        images_per_s = self._window_steps * self.cfg.data.batch_size / max(elapsed, 1e-9)
        record["images_per_s"] = images_per_s
        self._throughput.append(images_per_s)
        self.loggers.log_metrics(record, "train")
        postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.3g}", "img/s": f"{images_per_s:.0f}"}
        postfix.update({k: f"{v:.4g}" for k, v in self.last_metrics.items()})
        bar.set_postfix(postfix, refresh=False)
        self._window, self._window_steps, self._window_start = {}, 0, time.perf_counter()
        # all ranks agree on stopping and on saving at the same step (their clocks differ)
        flags = self._agree(self._stop_requested, self._time_for_checkpoint())
        self._stop_agreed, self._checkpoint_due = flags[0], flags[1]

    def _time_for_checkpoint(self) -> bool:
        minutes = self.cfg.trainer.checkpoint_every_minutes
        return minutes is not None and time.monotonic() - self._last_save_time >= 60.0 * minutes

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any rank (one small all-reduce under torchrun)."""
        if not is_distributed():
            return list(flags)
        reduced = all_reduce_sum(torch.tensor([int(f) for f in flags], device=self.device)).tolist()
        return [bool(v) for v in reduced]

    def _end_epoch(self, epoch: int, last: bool) -> None:
        cfg = self.cfg
        every = cfg.eval.every_n_epochs
        results: dict[str, float] = {}
        if last or (every > 0 and (epoch + 1) % every == 0):
            self._check_finite()
            with _eager_evaluation():  # every rank: the monitors shard their work and reduce the results
                for monitor in self.monitors.values():
                    results.update(monitor.evaluate(self.method))
            if results:
                self.last_metrics.update(results)
                self.loggers.log_metrics({"step": self.global_step, "epoch": epoch + 1, **results}, "eval")
                message(f"epoch {epoch + 1}/{self.epochs}: " + _format(results))
        every_epochs = cfg.trainer.checkpoint_every_epochs or (1 if cfg.trainer.keep_epoch_checkpoints else None)
        scheduled = every_epochs is not None and (epoch + 1) % every_epochs == 0
        if last or scheduled or self._agree(self._time_for_checkpoint())[0]:
            self._save()
            if (scheduled or last) and cfg.trainer.keep_epoch_checkpoints and is_main_process():
                shutil.copyfile(self.checkpoint_dir / "last.pt", self.checkpoint_dir / f"epoch_{epoch + 1:04d}.pt")

    def _write_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "method": self.cfg.method.name,
            "dataset": self.cfg.data.dataset,
            "epochs": self.epochs,
            "steps": self.global_step,
            "global_batch_size": self.cfg.data.batch_size,
            "world_size": world_size(),
            "device": str(self.device),
            "precision": self.precision,
            "train_seconds": round(self._train_seconds, 2),
            "images_per_s": round(sum(self._throughput) / len(self._throughput), 1) if self._throughput else None,
            **self.initial_metrics,
            **self.last_metrics,
        }
        if is_main_process():
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.loggers.log_summary(summary)
            message("done: " + _format({k: v for k, v in summary.items() if isinstance(v, float)}) + f"; see {self.run_dir}")
        return summary

    # ---------------------------------------------------------------------------- interruptions

    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint to resume from."""
        self._stop_requested = True

    def _interrupt(self) -> None:
        self._save()
        raise Interrupted(
            f"interrupted at step {self.global_step}/{self.total_steps}; checkpoint saved to {self.checkpoint_dir / 'last.pt'}. "
            f"Continue with the same command plus trainer.resume=true"
        )

    @contextmanager
    def _signals_handled(self) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current step, then save and stop; a second SIGINT aborts at once."""
        if not hasattr(signal, "SIGTERM") or not _in_main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested = True
            message("stopping after this step (saving a checkpoint); press Ctrl-C again to abort")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _format(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def compile_networks(method: nn.Module, backend: str, mode: str) -> list[nn.Module]:
    """``torch.compile`` (in place, state-dict keys unchanged) every network ``method`` lists in
    ``compiled_modules()``, with static shapes: each input resolution (global and local crops of
    multi-crop, a different batch size) gets its own specialized graph instead of one
    dynamic-shape graph with slower kernels. The recompilation limit is raised so that every
    resolution of every listed network keeps its graph. Returns the compiled modules."""
    import torch._dynamo.config as dynamo_config

    modules = list(method.compiled_modules()) if hasattr(method, "compiled_modules") else [method.backbone]
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 8 * max(1, len(modules))))
            break
    for module in modules:
        module.compile(backend=backend, mode=None if mode == "default" else mode, dynamic=False)
    return modules


@contextmanager
def _eager_evaluation() -> Iterator[None]:
    """Run evaluations without the compiled graphs: their batch sizes and eval-mode layers would
    each trigger a compilation longer than the evaluation itself."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


def train(cfg: Config) -> dict[str, Any]:
    """Run one pretraining job described by ``cfg``; returns the summary. Under torchrun the process
    group is created here and destroyed at the end, also when training fails."""
    with process_group(cfg.trainer.device, cfg.trainer.dist_timeout_minutes):
        return Trainer(cfg).fit()
