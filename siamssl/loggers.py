"""Where a run's numbers go: ``trainer.loggers`` (default ``[jsonl]``), written by the main process only.

* ``jsonl``: ``RUN/metrics.jsonl``, one JSON record per line (the file the report and the evaluation
  tools read).
* ``tensorboard``: event files in ``RUN/tensorboard`` (``trainer.tensorboard.log_dir``): every logged
  number as a scalar against the global step, ``train/<name>`` (loss, lr, images/s, method scalars)
  and ``eval/<name>`` (the kNN curve ``eval/knn_top1``, ``z_std``, probes, diagnostics); the report
  (``python -m siamssl.eval.report RUN``) adds its figures as images. Optional extra:
  ``pip install 'siamssl[tensorboard]'``.
* ``wandb``: a Weights & Biases run named after the run directory (``trainer.wandb.name``) in
  ``trainer.wandb.project``, with the resolved config, the same ``train/*`` and ``eval/*`` metrics
  against ``step``, and ``summary.json`` as the run summary. ``trainer.wandb.mode``: ``online``,
  ``offline`` (no network; ``wandb sync`` uploads it later) or ``disabled``; unset, it follows
  ``WANDB_MODE`` and otherwise logs offline when no API key is configured (``WANDB_API_KEY`` or a
  ``~/.netrc`` entry from ``wandb login``), so a run never waits for a login prompt or the network.
  Files go to ``RUN/wandb`` unless ``WANDB_DIR`` or ``trainer.wandb.dir`` says otherwise. A resumed
  run continues the same W&B run (its id is kept in ``RUN/wandb_run_id``). Optional extra:
  ``pip install 'siamssl[wandb]'``.

A resumed run first drops what was logged after its checkpoint (``metrics.jsonl`` lines, TensorBoard
events via ``purge_step``), so every logger shows one continuous run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import netrc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional
from urllib.parse import urlparse

from siamssl.errors import ConfigError
from siamssl.registry import Registry

Section = Literal["train", "eval"]


@dataclass
class TensorBoardOptions:
    """``log_dir``: where the event files go (default ``RUN/tensorboard``)."""

    log_dir: Optional[str] = None


@dataclass
class WandbOptions:
    """Weights & Biases: ``project``, ``entity`` (your user or team; null: the default), ``name`` (null:
    the run directory's name), ``tags``, ``mode`` (``online``/``offline``/``disabled``; null: the
    ``WANDB_MODE`` variable, else offline without an API key), ``dir`` (null: ``WANDB_DIR``, else
    the run directory)."""

    project: str = "siamssl"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    mode: Optional[Literal["online", "offline", "disabled"]] = None
    dir: Optional[str] = None


@dataclass(frozen=True)
class LoggerContext:
    """What a logger is built from: the run directory, the resolved config (a plain dict), this
    logger's options, and the step a resumed run continues from (None for a new run)."""

    run_dir: Path
    config: dict[str, Any]
    options: Any
    resumed_at: Optional[int] = None


class Logger:
    """One destination for the run's numbers; every hook is optional."""

    def log_metrics(self, record: dict[str, Any], section: Section) -> None:
        """A record with ``step`` and ``epoch`` and numbers: a training window or an evaluation."""

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG figures (the report's), by name."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The final ``summary.json``."""

    def close(self, failed: bool = False) -> None:
        """Flush and release; ``failed``: training stopped on an error or an interruption."""


LoggerBuilder = Callable[[LoggerContext], Logger]
LOGGERS: Registry[LoggerBuilder] = Registry("logger")


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a record other than its step and epoch."""
    return {k: float(v) for k, v in record.items()
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _missing(package: str, extra: str) -> ConfigError:
    return ConfigError(f"trainer.loggers has '{extra}', which needs the {package} package: pip install 'siamssl[{extra}]'")


# -------------------------------------------------------------------------------------------- jsonl


class JsonlLogger(Logger):
    """``metrics.jsonl``: one JSON record per line."""

    def __init__(self, path: Path, resumed_at: Optional[int] = None) -> None:
        self.path = path
        if resumed_at is not None:
            self.truncate_after(resumed_at)

    def log_metrics(self, record: dict[str, Any], section: Section) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records written after ``step`` (work lost when a run was interrupted)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


@LOGGERS.register("jsonl")
def jsonl_logger(context: LoggerContext) -> Logger:
    return JsonlLogger(context.run_dir / "metrics.jsonl", context.resumed_at)


# -------------------------------------------------------------------------------------- tensorboard


def tensorboard_dir(run_dir: Path, options: TensorBoardOptions) -> Path:
    return Path(options.log_dir).expanduser() if options.log_dir else run_dir / "tensorboard"


class TensorBoardLogger(Logger):
    """Scalars ``<section>/<name>`` against the global step; images from PNG files."""

    def __init__(self, log_dir: Path, resumed_at: Optional[int] = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        # purge_step: events at or after the resumed step, written before the interruption, are dropped
        self.writer = SummaryWriter(str(log_dir), purge_step=None if resumed_at is None else resumed_at + 1)

    def log_metrics(self, record: dict[str, Any], section: Section) -> None:
        for name, value in _numbers(record).items():
            self.writer.add_scalar(f"{section}/{name}", value, global_step=int(record["step"]))
        self.writer.flush()

    def log_images(self, images: dict[str, Path], step: int) -> None:
        from torchvision.io import ImageReadMode, decode_png, read_file

        for name, path in images.items():
            image = decode_png(read_file(str(path)), mode=ImageReadMode.RGB)
            self.writer.add_image(f"report/{name}", image, global_step=step, dataformats="CHW")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


@LOGGERS.register("tensorboard")
def tensorboard_logger(context: LoggerContext) -> Logger:
    return TensorBoardLogger(tensorboard_dir(context.run_dir, context.options), context.resumed_at)


# -------------------------------------------------------------------------------------------- wandb


def wandb_api_key_configured() -> bool:
    """Whether W&B has a key without asking: ``WANDB_API_KEY`` or a ``~/.netrc`` entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(options: WandbOptions) -> Optional[str]:
    """The mode to start W&B in: the configured one, else None (``WANDB_MODE`` decides) when that
    variable is set, else ``offline`` without an API key."""
    if options.mode is not None:
        return options.mode
    if os.environ.get("WANDB_MODE"):
        return None
    return None if wandb_api_key_configured() else "offline"


class WandbLogger(Logger):
    """A W&B run: config, ``train/*``/``eval/*`` metrics against ``step``, the summary."""

    def __init__(self, context: LoggerContext) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        options: WandbOptions = context.options
        mode = wandb_mode(options)
        if mode == "offline" and options.mode is None:
            print("siamssl: no W&B API key: logging offline (upload later with `wandb sync`)", file=sys.stderr)
        id_file = context.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if context.resumed_at is not None and id_file.is_file() else None
        directory = options.dir or (None if os.environ.get("WANDB_DIR") else str(context.run_dir))
        self.run = wandb.init(
            project=options.project, entity=options.entity, name=options.name or context.run_dir.resolve().name,
            tags=options.tags or None, config=context.config, dir=directory, mode=mode,
            id=run_id, resume="allow" if run_id else None,
        )
        # metrics are plotted against the trainer's step, so a resumed run may log steps again
        self.run.define_metric("step")
        self.run.define_metric("train/*", step_metric="step")
        self.run.define_metric("eval/*", step_metric="step")
        id_file.write_text(self.run.id + "\n")

    def log_metrics(self, record: dict[str, Any], section: Section) -> None:
        values = {f"{section}/{k}": v for k, v in _numbers(record).items() if math.isfinite(v)}
        self.run.log({"step": int(record["step"]), "epoch": record.get("epoch"), **values})

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


@LOGGERS.register("wandb")
def wandb_logger(context: LoggerContext) -> Logger:
    return WandbLogger(context)


# ------------------------------------------------------------------------------------------- group


class RunLoggers(Logger):
    """Every configured logger, called in turn (an empty group on processes other than rank 0)."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log_metrics(self, record: dict[str, Any], section: Section) -> None:
        for logger in self.loggers:
            logger.log_metrics(record, section)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for logger in self.loggers:
            logger.log_images(images, step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_summary(summary)

    def close(self, failed: bool = False) -> None:
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close(failed)

    def __enter__(self) -> "RunLoggers":
        return self

    def __exit__(self, exc_type: Optional[type], *exc: object) -> None:
        self.close(failed=exc_type is not None)  # also when training stops on an error or an interruption


def check_loggers_available(names: list[str]) -> None:
    """Fail with one line, before anything runs, when a configured logger's package is missing."""
    for name, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("wandb", "wandb", "wandb")):
        if name in names and importlib.util.find_spec(module) is None:
            raise _missing(module, extra)


def build_loggers(names: list[str], run_dir: Path, config: dict[str, Any], options: dict[str, Any],
                  resumed_at: Optional[int] = None) -> RunLoggers:
    """The configured loggers (``options``: each logger's options by name, e.g. ``{"wandb": WandbOptions()}``)."""
    check_loggers_available(names)
    return RunLoggers([LOGGERS.get(name)(LoggerContext(run_dir, config, options.get(name), resumed_at)) for name in names])


def log_report_figures(run_dir: Path, config: Optional[dict[str, Any]], images: dict[str, Path]) -> bool:
    """Add the report's figures to the run's TensorBoard log, when the run logs to TensorBoard, at
    the run's last step; returns whether it did."""
    trainer = (config or {}).get("trainer") or {}
    if "tensorboard" not in (trainer.get("loggers") or []):
        return False
    check_loggers_available(["tensorboard"])
    options = TensorBoardOptions(**(trainer.get("tensorboard") or {}))
    step = 0
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
        step = max(steps, default=0)
    logger = TensorBoardLogger(tensorboard_dir(run_dir, options))
    try:
        logger.log_images(images, step)
    finally:
        logger.close()
    return True
