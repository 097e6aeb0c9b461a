"""The run configuration: YAML + dotted command-line overrides, validated before anything runs.

Sections: ``method`` (its keys come from the method's ``Config``), ``backbone`` (likewise),
``data``, ``optim``, ``trainer``, ``eval`` (with one sub-section per monitor), ``output_dir``, ``seed``.
"""

from __future__ import annotations

import copy
import importlib.resources
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import yaml

from siamssl.backbones import BACKBONES
from siamssl.data.config import DataConfig
from siamssl.errors import ConfigError
from siamssl.eval.monitors import MONITORS
from siamssl.loggers import LOGGERS, TensorBoardOptions, WandbOptions
from siamssl.methods import METHODS
from siamssl.registry import Registry, closest_match
from siamssl.runtime import message
from siamssl.schema import build_section, dotted_keys, section_to_dict, unknown_key_error

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    The peak learning rate is ``base_lr × data.batch_size / 256`` (``lr_scaling: linear``, the rule of
    SimSiam, MoCo v3, BYOL, Barlow Twins...) or ``base_lr`` itself (``none``: MoCo v2, SwAV).
    ``schedule_unit: epoch`` changes the rate once per epoch (SimSiam/MoCo v2 code), ``step`` every
    step. ``schedule: step`` multiplies the rate by ``step_gamma`` at each epoch of ``step_milestones``
    (MoCo v1: ×0.1 at 120 and 160). ``exclude_bias_and_norm``: no weight decay (and no LARS adaptation)
    for 1-D parameters; default True for LARS and False for SGD/AdamW/Adam.
    ``name: adam`` is ``torch.optim.Adam``, whose weight decay is an L2 term added to the gradient
    (coupled; lightly's CIFAR-10 SwAV benchmark); ``adamw`` decouples it.
    ``weight_decay_end``: when set, the weight decay of the decayed groups follows a per-step cosine
    from ``weight_decay`` to this value (DINO: 0.04 → 0.4); groups excluded from decay or with their
    own ``weight_decay`` keep theirs.
    ``lars_clip``: LARC's clipping (apex ``LARC(clip=True)``, solo-learn ``clip_lr``): a LARS-adapted
    rate never exceeds the scheduled rate, i.e. the update uses ``min(trust / lr, 1)``.
    """

    name: Literal["sgd", "lars", "adamw", "adam"] = "sgd"
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
    ``epochs``). ``precision``: ``auto`` (default: bf16 autocast on a CUDA GPU that supports it,
    fp32 on the CPU and older GPUs), fp32, bf16 autocast (CPU and GPU) or fp16 autocast with
    gradient scaling (GPU; its scaler reads an overflow flag back every step); losses,
    normalizations and softmaxes stay in float32. ``tf32``: on CUDA, float32 matrix products and
    convolutions may use TensorFloat-32 (``torch.set_float32_matmul_precision("high")``; false:
    full float32). ``resume``: true continues ``output_dir``'s last checkpoint, a path continues
    that checkpoint (saved under any number of processes: the global batch, not the world size,
    defines a step). ``overwrite``: replace an existing ``output_dir``. ``deterministic``:
    deterministic algorithms only (also turns off cuDNN autotuning, which is on otherwise on GPUs).

    ``device``: ``auto`` (this process's GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``
    (not under torchrun, where ``LOCAL_RANK`` picks the GPU). ``dist_timeout_minutes``: how long a
    collective (a gather, a barrier while rank 0 writes a checkpoint) may wait under torchrun
    before the job fails instead of hanging.

    ``sync_bn``: under ``torchrun`` with more than one process, compute BatchNorm statistics over the
    global batch (SyncBatchNorm); null (default) follows the method's paper (``default_sync_bn``: on
    for SimSiam, BYOL, SimCLR, MoCo v3, Barlow Twins, VICReg, SwAV; off for Shuffle-BN MoCo,
    InstDisc, CMC).
    ``compile``: ``torch.compile`` every network the method lists in ``compiled_modules()`` (the
    backbone and its momentum target / teacher) with static shapes, one graph per input resolution
    (multi-crop) and ``compile_backend`` (``inductor``; ``aot_eager`` checks tracing without code
    generation) and ``compile_mode`` (inductor: ``default``, ``reduce-overhead`` — CUDA graphs,
    removing per-kernel launch cost, worth it for small models and images — or ``max-autotune``);
    evaluations run the same modules eagerly. ``channels_last``: NHWC memory format for model and
    images (faster convolutions with AMP on recent GPUs); ``auto`` (default): on for convolutional
    backbones on CUDA.

    Checkpoints (``checkpoints/last.pt``) are written at the end of training, on interruption, and
    whenever any of these is due: ``checkpoint_every_minutes`` of wall time since the last one
    (checked at log steps and epoch ends; null: never by time), every ``checkpoint_every_epochs``
    epochs (null, the default: epoch ends count only through the minutes rule, so long epochs are
    saved at each end and few-second CIFAR epochs are not), every ``checkpoint_every_steps`` steps.
    ``keep_epoch_checkpoints`` copies each epoch-end checkpoint to ``epoch_NNNN.pt`` (every epoch
    when ``checkpoint_every_epochs`` is null).

    ``loggers``: where metrics go, written by rank 0 (:mod:`siamssl.loggers`): ``jsonl``
    (``metrics.jsonl``, which the report reads), ``tensorboard`` (options under ``tensorboard``) and
    ``wandb`` (options under ``wandb``; offline without an API key).
    """

    epochs: int = 100
    max_steps: Optional[int] = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tf32: bool = True
    device: str = "auto"
    dist_timeout_minutes: float = 30.0
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    channels_last: Union[bool, Literal["auto"]] = "auto"
    sync_bn: Optional[bool] = None
    log_every_steps: int = 20
    checkpoint_every_minutes: Optional[float] = 10.0
    checkpoint_every_epochs: Optional[int] = None
    checkpoint_every_steps: Optional[int] = None
    keep_epoch_checkpoints: bool = False
    resume: Union[bool, str] = False
    overwrite: bool = False
    progress_bar: bool = True
    deterministic: bool = False
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    tensorboard: TensorBoardOptions = field(default_factory=TensorBoardOptions)
    wandb: WandbOptions = field(default_factory=WandbOptions)

    def __post_init__(self) -> None:
        if self.dist_timeout_minutes <= 0:
            raise ValueError(f"trainer.dist_timeout_minutes must be positive, got {self.dist_timeout_minutes}")
        if self.checkpoint_every_minutes is not None and self.checkpoint_every_minutes <= 0:
            raise ValueError(f"trainer.checkpoint_every_minutes must be positive or null, got {self.checkpoint_every_minutes}")
        for key in ("checkpoint_every_epochs", "checkpoint_every_steps", "log_every_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"trainer.{key} must be at least 1, got {value}")


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
    trainer = build_section(TrainerConfig, raw.get("trainer") or {}, "trainer")
    for name in trainer.loggers:
        LOGGERS.entry(name)  # an unknown logger fails here, naming the closest
    return Config(
        method=_named_section(raw, "method", METHODS),
        backbone=_named_section(raw, "backbone", BACKBONES),
        data=build_section(DataConfig, raw.get("data") or {}, "data"),
        optim=build_section(OptimConfig, raw.get("optim") or {}, "optim"),
        trainer=trainer,
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


RECIPE_PACKAGE = "siamssl.recipes"
RECIPE_SUFFIX = ".yaml"


def recipes_root() -> Traversable:
    """The folder of the shipped recipes.

    In a source checkout (a clone, with or without an editable install) that is its ``configs/``
    folder, next to the imported ``siamssl`` package: the recipes being edited there are the ones
    used, even when another checkout of siamssl is installed in the environment. An installed
    package carries the same folder as its package data ``siamssl.recipes`` (setup.py maps
    ``configs/`` there when the wheel is built), read through ``importlib.resources``.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "configs").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "configs"
    try:
        return importlib.resources.files(RECIPE_PACKAGE)
    except ModuleNotFoundError:
        raise ConfigError("this siamssl installation has no recipes (siamssl.recipes is missing); reinstall siamssl") from None


def _recipe_name(config: str) -> str:
    """``simsiam``, ``simsiam.yaml`` and ``configs/simsiam.yaml`` (a clone's path) all name ``simsiam``."""
    name = config.replace("\\", "/").removeprefix("./").removeprefix("configs/")
    return name.removesuffix(RECIPE_SUFFIX)


def find_recipe(name: str) -> Optional[Traversable]:
    """The shipped recipe called ``name`` (``simsiam``, ``benchmarks/lightly_cifar10/byol``), or None."""
    parts = _recipe_name(name).split("/")
    if not parts[-1] or any(part in ("", ".", "..") for part in parts):
        return None
    node = recipes_root()
    for part in parts[:-1]:
        node = node.joinpath(part)
    node = node.joinpath(parts[-1] + RECIPE_SUFFIX)
    return node if node.is_file() else None


def list_recipes() -> list[str]:
    """Names of every shipped recipe, subfolders included (``benchmarks/lightly_cifar10/byol``)."""
    names: list[str] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.name.startswith((".", "_")):
                continue
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(RECIPE_SUFFIX):
                names.append(prefix + child.name.removesuffix(RECIPE_SUFFIX))

    walk(recipes_root(), "")
    return sorted(names)


def recipe_description(text: str, width: int = 100) -> str:
    """The first sentence of a recipe's header comment, at most ``width`` characters."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        stripped = line.lstrip("#").strip()
        if not stripped:
            break
        header.append(stripped)
    sentence = " ".join(header)
    end = sentence.find(". ")
    while end >= 0 and sentence.count("(", 0, end) > sentence.count(")", 0, end):  # "(App. D)" goes on
        end = sentence.find(". ", end + 1)
    sentence = sentence[: end + 1] if end >= 0 else sentence
    if len(sentence) > width:
        sentence = sentence[: width - 1].rsplit(" ", 1)[0] + "…"
    return sentence.removesuffix(":")


def read_config_text(config: str) -> tuple[str, str]:
    """The YAML text of ``config`` and where it came from: an existing file path, else a shipped
    recipe's name (``simsiam``, ``benchmarks/lightly_cifar10/byol``; ``.yaml`` and a leading
    ``configs/`` are optional, so a clone's ``configs/simsiam.yaml`` works from anywhere)."""
    file = Path(config).expanduser()
    if file.is_file():
        return file.read_text(), str(file)
    if file.is_dir():
        raise ConfigError(f"config '{config}' is a folder; pass a YAML file or a recipe name")
    recipe = find_recipe(config)
    if recipe is None:
        names = list_recipes()
        hint = closest_match(_recipe_name(config), names)
        did_you_mean = f" (did you mean '{hint}'?)" if hint else ""
        raise ConfigError(
            f"config '{config}' is neither a file nor a shipped recipe{did_you_mean}; "
            "list the recipes with siamssl-train --list-configs"
        )
    return recipe.read_text(), f"recipe {_recipe_name(config)}"


def load_raw(path: Optional[str]) -> dict:
    """Read a YAML config into a dict (an empty dict for None): a file path, or the name of a shipped
    recipe (see :func:`read_config_text`)."""
    if path is None:
        return {}
    text, source = read_config_text(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config '{source}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config '{source}' must hold a mapping of sections")
    return raw


def drop_replaced_backbone_options(raw: dict, recipe_backbone: Optional[str], overridden: set[str]) -> list[str]:
    """When an override replaces the recipe's backbone (``backbone.name=timm`` on a ResNet-18 recipe),
    drop the recipe's backbone options the new backbone does not take (a ResNet's ``widths`` mean
    nothing to timm); options it shares (``cifar_stem``) and options given on the command line stay.
    Returns the dropped keys."""
    section = raw.get("backbone")
    if not isinstance(section, dict) or recipe_backbone is None:
        return []
    name = section.get("name", _DEFAULT_NAMES["backbone"])
    if name == recipe_backbone or not isinstance(name, str) or name not in BACKBONES:
        return []
    config = BACKBONES.entry(name).config
    accepted = {f.name for f in fields(config)} if config is not None else set()
    dropped = [k for k in section if k != "name" and k not in accepted and f"backbone.{k}" not in overridden]
    for key in dropped:
        del section[key]
    return dropped


def load_config(path: Optional[str], overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """YAML file + ``key=value`` overrides -> validated :class:`Config`."""
    raw = load_raw(path)
    recipe_backbone = (raw.get("backbone") or {}).get("name", _DEFAULT_NAMES["backbone"]) if isinstance(raw.get("backbone"), dict) else None
    overridden = set()
    for override in overrides:
        apply_override(raw, override)
        overridden.add(override.split("=", 1)[0].strip())
    dropped = drop_replaced_backbone_options(raw, recipe_backbone, overridden)
    if dropped:
        message(f"backbone.name={raw['backbone']['name']} replaces the recipe's '{recipe_backbone}'; "
                f"its options {', '.join(dropped)} do not apply to it and were dropped")
    return config_from_dict(raw)
