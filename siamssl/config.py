"""The run configuration: YAML + dotted command-line overrides, validated before anything runs.

Sections: ``method`` (its keys come from the method's ``Config``), ``backbone`` (likewise),
``data``, ``optim``, ``trainer``, ``eval`` (with one sub-section per monitor), ``output_dir``, ``seed``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from siamssl.backbones import BACKBONES
from siamssl.data.config import DataConfig
from siamssl.errors import ConfigError
from siamssl.eval.monitors import MONITORS
from siamssl.methods import METHODS
from siamssl.registry import Registry
from siamssl.schema import build_section, dotted_keys, section_to_dict, unknown_key_error


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    The peak learning rate is ``base_lr × data.batch_size / 256`` (``lr_scaling: linear``, the rule of
    SimSiam, MoCo v3, BYOL, Barlow Twins...) or ``base_lr`` itself (``none``: MoCo v2, SwAV).
    ``schedule_unit: epoch`` changes the rate once per epoch (SimSiam/MoCo v2 code), ``step`` every
    step. ``schedule: step`` multiplies the rate by ``step_gamma`` at each epoch of ``step_milestones``
    (MoCo v1: ×0.1 at 120 and 160). ``exclude_bias_and_norm``: no weight decay (and no LARS adaptation)
    for 1-D parameters; default True for LARS and False for SGD/AdamW.
    ``weight_decay_end``: when set, the weight decay of the decayed groups follows a per-step cosine
    from ``weight_decay`` to this value (DINO: 0.04 → 0.4); groups excluded from decay or with their
    own ``weight_decay`` keep theirs.
    ``lars_clip``: LARC's clipping (apex ``LARC(clip=True)``, solo-learn ``clip_lr``): a LARS-adapted
    rate never exceeds the scheduled rate, i.e. the update uses ``min(trust / lr, 1)``.
    """

    name: Literal["sgd", "lars", "adamw"] = "sgd"
    base_lr: float = 0.05
    lr_scaling: Literal["linear", "none"] = "linear"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    weight_decay_end: Optional[float] = None
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.001
    lars_clip: bool = False
    exclude_bias_and_norm: Optional[bool] = None
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    schedule_unit: Literal["step", "epoch"] = "step"
    step_milestones: list[float] = field(default_factory=list)
    step_gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    grad_clip_norm: Optional[float] = None


@dataclass
class TrainerConfig:
    """Training loop options.

    ``max_steps`` stops after that many optimizer steps and sets the schedule's length (overrides
    ``epochs``). ``precision``: fp32, bf16 autocast (CPU and GPU; the fast choice on recent GPUs) or
    fp16 autocast with gradient scaling (GPU; its scaler reads an overflow flag back every step);
    losses, normalizations and softmaxes stay in float32. ``resume``: true continues
    ``output_dir``'s last checkpoint, a path continues that checkpoint (saved under any number of
    processes: the global batch, not the world size, defines a step). ``overwrite``: replace an
    existing ``output_dir``. ``deterministic``: deterministic algorithms only (also turns off cuDNN
    autotuning, which is on otherwise on GPUs).

    ``sync_bn``: under ``torchrun`` with more than one process, compute BatchNorm statistics over the
    global batch (SyncBatchNorm); null (default) follows the method's paper (``default_sync_bn``: on
    for SimSiam, BYOL, SimCLR, MoCo v3, Barlow Twins, VICReg, SwAV; off for Shuffle-BN MoCo,
    InstDisc, CMC).
    ``compile``: ``torch.compile`` the backbone with ``compile_backend`` (``inductor``; ``aot_eager``
    checks tracing without code generation) and ``compile_mode`` (inductor: ``default``,
    ``reduce-overhead`` — CUDA graphs, removing per-kernel launch cost, worth it for small models and
    images — or ``max-autotune``). ``channels_last``: NHWC memory format for model and images (faster
    convolutions with AMP on recent GPUs).
    """

    epochs: int = 100
    max_steps: Optional[int] = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    channels_last: bool = False
    sync_bn: Optional[bool] = None
    log_every_steps: int = 20
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: Optional[int] = None
    keep_epoch_checkpoints: bool = False
    resume: Union[bool, str] = False
    overwrite: bool = False
    progress_bar: bool = True
    deterministic: bool = False


@dataclass
class EvalConfig:
    """Monitors run every ``every_n_epochs`` epochs and after the last one (0: only after the last).
    ``monitors``: registered monitor names; each has its options under ``eval.<name>``."""

    every_n_epochs: int = 10
    monitors: list[str] = field(default_factory=lambda: ["knn", "embedding_std"])
    batch_size: int = 512


@dataclass
class NamedSection:
    """A section whose keys depend on its ``name`` (method, backbone): ``options`` is the registered
    component's config dataclass; attribute access falls through to it (``cfg.method.stop_gradient``)."""

    name: str
    options: Any

    def __getattr__(self, item: str) -> Any:
        if item in ("name", "options") or "options" not in self.__dict__:
            raise AttributeError(item)
        return getattr(self.options, item)


@dataclass
class Config:
    method: NamedSection
    backbone: NamedSection
    data: DataConfig
    optim: OptimConfig
    trainer: TrainerConfig
    eval: EvalConfig
    monitor_options: dict[str, Any]
    output_dir: str = "runs/run"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, numbers, strings): YAML- and ``weights_only``-safe."""
        eval_dict = section_to_dict(self.eval)
        eval_dict.update({name: section_to_dict(opts) for name, opts in self.monitor_options.items()})
        return {
            "method": {"name": self.method.name, **section_to_dict(self.method.options)},
            "backbone": {"name": self.backbone.name, **section_to_dict(self.backbone.options)},
            "data": section_to_dict(self.data),
            "optim": section_to_dict(self.optim),
            "trainer": section_to_dict(self.trainer),
            "eval": eval_dict,
            "output_dir": self.output_dir,
            "seed": self.seed,
        }


_TOP_LEVEL = ("method", "backbone", "data", "optim", "trainer", "eval", "output_dir", "seed")
_DEFAULT_NAMES = {"method": "simsiam", "backbone": "resnet18"}


def _named_section(raw: dict, section: str, registry: Registry) -> NamedSection:
    options = dict(raw.get(section) or {})
    if not isinstance(options, dict):
        raise ConfigError(f"config key '{section}' must be a mapping")
    name = options.pop("name", _DEFAULT_NAMES[section])
    if not isinstance(name, str):
        raise ConfigError(f"config key '{section}.name' must be a string, got {name!r}")
    entry = registry.entry(name)
    return NamedSection(name, build_section(entry.config, options, section))


def _eval_section(raw: dict) -> tuple[EvalConfig, dict[str, Any]]:
    """The ``eval`` section and, for every registered monitor with options, its ``eval.<name>`` part."""
    options = dict(raw.get("eval") or {})
    monitor_options: dict[str, Any] = {}
    for entry in MONITORS:
        if entry.config is not None:
            monitor_options[entry.name] = build_section(entry.config, options.pop(entry.name, None) or {}, f"eval.{entry.name}")
    section = build_section(EvalConfig, options, "eval")
    for name in section.monitors:
        MONITORS.entry(name)  # an unknown monitor fails here, naming the closest
    return section, monitor_options


def all_keys(raw: dict) -> list[str]:
    """Every valid dotted key for the method and backbone selected in ``raw``."""
    keys = ["output_dir", "seed"]
    for section, registry in (("method", METHODS), ("backbone", BACKBONES)):
        name = (raw.get(section) or {}).get("name", _DEFAULT_NAMES[section])
        if name in registry:
            keys += [f"{section}.name"] + [f"{section}.{k}" for k in dotted_keys(registry.entry(name).config)]
    keys += [f"data.{k}" for k in dotted_keys(DataConfig)]
    keys += [f"optim.{k}" for k in dotted_keys(OptimConfig)]
    keys += [f"trainer.{k}" for k in dotted_keys(TrainerConfig)]
    keys += [f"eval.{k}" for k in dotted_keys(EvalConfig)]
    for entry in MONITORS:
        if entry.config is not None:
            keys += [f"eval.{entry.name}.{k}" for k in dotted_keys(entry.config)]
    return keys


def config_from_dict(raw: dict) -> Config:
    """Validate a nested dict (from YAML) and build the :class:`Config`."""
    raw = copy.deepcopy(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of sections")
    for key in raw:
        if key not in _TOP_LEVEL:
            raise unknown_key_error(str(key), all_keys(raw))
    top = build_section(_TopLevel, {k: raw[k] for k in ("output_dir", "seed") if k in raw}, "")
    eval_section, monitor_options = _eval_section(raw)
    return Config(
        method=_named_section(raw, "method", METHODS),
        backbone=_named_section(raw, "backbone", BACKBONES),
        data=build_section(DataConfig, raw.get("data") or {}, "data"),
        optim=build_section(OptimConfig, raw.get("optim") or {}, "optim"),
        trainer=build_section(TrainerConfig, raw.get("trainer") or {}, "trainer"),
        eval=eval_section,
        monitor_options=monitor_options,
        output_dir=top.output_dir,
        seed=top.seed,
    )


@dataclass
class _TopLevel:
    output_dir: str = "runs/run"
    seed: int = 0


def apply_override(raw: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) to a nested dict, in place."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key=value")
    key, text = override.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{override}' has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def load_raw(path: Optional[str]) -> dict:
    """Read a YAML config file into a dict (an empty dict for None)."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    return raw


def load_config(path: Optional[str], overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """YAML file + ``key=value`` overrides -> validated :class:`Config`."""
    raw = load_raw(path)
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)
