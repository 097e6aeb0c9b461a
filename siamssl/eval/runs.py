"""Trained runs for the evaluation tools: checkpoint → method and data, frozen features computed once
and cached, and the command-line plumbing shared by ``python -m siamssl.eval.{linear,knn,diagnostics,
report}`` and ``python -m siamssl.export``.

These tools sit on top of the trainer's files: a checkpoint (``siamssl.checkpoint``) holds the
resolved ``config`` and the method's ``model`` state; the method is rebuilt from the registries
exactly as the trainer builds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from siamssl.build import build_run_method
from siamssl.checkpoint import load_checkpoint, save_atomic
from siamssl.config import Config, apply_override, config_from_dict
from siamssl.data.datasets import ImageSplit, LabeledImages, build_dataset
from siamssl.data.loader import eval_batches
from siamssl.errors import ConfigError, DataError, SiamSSLError
from siamssl.eval.knn import extract_features
from siamssl.methods import SSLMethod
from siamssl.registry import unknown_name_message
from siamssl.runtime import resolve_device, seed_everything
from siamssl.schema import build_section, type_name

FeatureKind = Literal["backbone", "projector"]


# --------------------------------------------------------------------------------------- loading


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory → its ``checkpoints/last.pt``."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        last = candidate / "checkpoints" / "last.pt"
        if not last.is_file():
            raise SiamSSLError(f"'{candidate}' has no checkpoints/last.pt (pass a run directory or a .pt file)")
        return last
    if not candidate.is_file():
        raise SiamSSLError(f"checkpoint '{path}' does not exist")
    return candidate


def run_directory(checkpoint: Path) -> Path:
    """The run directory of a checkpoint: ``RUN`` for ``RUN/checkpoints/*.pt``, else the file's folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def config_of(state: dict[str, Any], data_overrides: Sequence[str] = ()) -> Config:
    """The run's validated config, with ``data.*`` overrides (a dataset that moved, another dataset).

    The ``eval`` section is dropped: the evaluation tools have their own options, and a run may have
    used monitors registered by code that is not imported here."""
    raw = dict(state["config"])
    raw.pop("eval", None)
    for override in data_overrides:
        if not override.split("=", 1)[0].strip().startswith("data."):
            raise ConfigError(f"'{override}': only data.* keys of the run's config can be overridden here")
        apply_override(raw, override)
    return config_from_dict(raw)


@dataclass
class LoadedRun:
    """A trained (or, with ``random_init``, freshly initialized) method ready for evaluation."""

    method: SSLMethod
    config: Config
    checkpoint: Path
    run_dir: Path
    state: dict[str, Any] = field(repr=False)
    device: torch.device
    random_init: bool
    data: Optional[LabeledImages] = field(default=None, repr=False)

    def labeled_data(self) -> LabeledImages:
        if self.data is None:
            self.data = build_dataset(self.config.data)
        return self.data

    def split(self, name: Literal["train", "test"]) -> ImageSplit:
        data = self.labeled_data()
        split = data.train if name == "train" else data.test
        if split is None:
            raise DataError(f"dataset '{self.config.data.dataset}' has no test split (an image folder needs test/ or val/)")
        return split

    @property
    def crop_size(self) -> int:
        return self.config.data.augment.crop_size

    @property
    def mean(self) -> tuple[float, ...]:
        """The per-channel mean the model's training views were normalized with."""
        return tuple(self.config.data.augment.mean or self.labeled_data().mean)

    @property
    def std(self) -> tuple[float, ...]:
        """The per-channel std the model's training views were normalized with."""
        return tuple(self.config.data.augment.std or self.labeled_data().std)


def load_run(
    checkpoint: str | Path,
    data_overrides: Sequence[str] = (),
    device: str = "auto",
    random_init: bool = False,
) -> LoadedRun:
    """Rebuild a run's method from its checkpoint (config → dataset, backbone + method via the
    registries, then the saved weights), in eval mode on ``device``.

    ``random_init``: skip the saved weights; the method is initialized with the run's seed and the
    trainer's construction order (the random-init baseline). Buffers whose size depends on the data
    (memory banks) take the checkpoint's shape, so a run can be evaluated on another dataset.
    """
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    cfg = config_of(state, data_overrides)
    target = resolve_device(device)
    seed_everything(cfg.seed)
    data = build_dataset(cfg.data)
    steps_per_epoch = max(1, len(data.pretraining_split()) // cfg.data.batch_size)
    method = build_run_method(cfg, data, steps_per_epoch, int(state["total_steps"]))
    if not random_init:
        adopt_buffer_shapes(method, state["model"])
        try:
            method.load_state_dict(state["model"])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise SiamSSLError(f"checkpoint '{path}' does not match its method config: {first}") from None
    method.to(target).eval()
    return LoadedRun(method, cfg, path, run_directory(path), state, target, random_init, data)


def adopt_buffer_shapes(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Give every buffer of ``module`` whose shape differs from ``state``'s the saved shape (memory
    banks sized by the training set); parameters are left alone, so real mismatches still fail."""
    for key, value in state.items():
        owner_name, _, name = key.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            continue
        buffer = owner._buffers.get(name)
        if buffer is not None and buffer.shape != value.shape:
            owner._buffers[name] = torch.empty(value.shape, dtype=buffer.dtype, device=buffer.device)


# -------------------------------------------------------------------------------------- features


def embedding_function(method: SSLMethod, kind: FeatureKind) -> Callable[[Tensor], Tensor]:
    """``method.embed`` (backbone features) or ``method.project`` (projector output)."""
    return method.embed if kind == "backbone" else method.project


def _cache_key(run: LoadedRun, split: str, kind: str, limit: Optional[int]) -> str:
    stat = run.checkpoint.stat()
    identity = {
        "checkpoint": str(run.checkpoint.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "random_init": run.random_init,
        "seed": run.config.seed,
        "data": {k: v for k, v in run.config.to_dict()["data"].items() if k not in ("batch_size", "num_workers")},
        "split": split,
        "kind": kind,
        "limit": limit,
    }
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def frozen_features(
    run: LoadedRun,
    split: Literal["train", "test"],
    kind: FeatureKind = "backbone",
    limit: Optional[int] = None,
    batch_size: int = 256,
    cache: bool = True,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Features of the frozen method (eval mode: BatchNorm uses its running statistics) on a split
    (``limit`` samples of it, a fixed random subset), computed once and cached in
    ``RUN/eval_cache/`` (keyed by the checkpoint file, data config, split, kind and limit).
    Returns float32 (features, labels) on the run's device."""
    path = run.run_dir / "eval_cache" / f"{split}-{kind}-{_cache_key(run, split, kind, limit)}.pt"
    if cache and path.is_file():
        stored = torch.load(path, map_location=run.device, weights_only=True)
        return stored["features"], stored["labels"]
    batches = eval_batches(
        run.split(split).subset(limit), batch_size, run.mean, run.std, run.device, run.crop_size, num_workers
    )
    run.method.eval()
    features, labels = extract_features(embedding_function(run.method, kind), batches)
    if cache:
        try:
            save_atomic({"features": features.cpu(), "labels": labels.cpu()}, path)
        except OSError as exc:  # a read-only run directory only loses the cache
            print(f"siamssl: cannot cache features in {path.parent} ({exc.strerror})", file=sys.stderr)
    return features, labels


# ---------------------------------------------------------------------------- command-line plumbing


def options_help(options_cls: type) -> str:
    """One line per option: ``name (type, default X)``, for ``--help``."""
    lines = []
    hints = typing.get_type_hints(options_cls)
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name}  ({type_name(hints[f.name])}; default {default!r})")
    return "\n".join(lines)


def eval_parser(prog: str, description: str, options_cls: type, positional_run: bool = False, epilog: str = "") -> argparse.ArgumentParser:
    """``--checkpoint PATH`` (or a positional run directory) and ``key=value`` overrides."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(epilog + "\n\n" if epilog else "") + "options (key=value):\n" + options_help(options_cls)
        + "\n  data.KEY=VALUE  (override the run's data config, e.g. data.root=/new/path)",
    )
    if positional_run:
        parser.add_argument("checkpoint", metavar="RUN", help="a run directory (or a checkpoint .pt file)")
    else:
        parser.add_argument("--checkpoint", required=True, help="a checkpoint .pt file, or a run directory (→ checkpoints/last.pt)")
    parser.add_argument("overrides", nargs="*", help="key=value options, and data.KEY=VALUE overrides of the run's config")
    return parser


def parse_overrides(overrides: Sequence[str], options_cls: type, presets: Optional[dict[str, dict[str, Any]]] = None) -> tuple[Any, list[str]]:
    """Split ``key=value`` pairs into the tool's options (validated against ``options_cls``, on top of
    ``presets[preset]`` when the class has a ``preset`` field) and ``data.*`` overrides."""
    raw: dict[str, Any] = {}
    data_overrides = []
    names = [f.name for f in dataclasses.fields(options_cls)]
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("data."):
            data_overrides.append(item)
            continue
        if "=" in item and key not in names:
            raise ConfigError(unknown_name_message("option", key, names))
        apply_override(raw, item)
    if presets is not None:
        name = raw.get("preset", _default(options_cls, "preset"))
        if name not in presets:
            raise ConfigError(unknown_name_message("preset", str(name), list(presets)))
        raw = {**presets[name], **raw}
    return build_section(options_cls, raw, ""), data_overrides


def _default(options_cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(options_cls) if f.name == name)


def run_cli(body: Callable[[], None]) -> int:
    """Run a command; a siamssl error becomes one line ``error: ...`` and exit status 2."""
    try:
        body()
    except SiamSSLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def evaluation_main(
    argv: Optional[Sequence[str]],
    prog: str,
    description: str,
    options_cls: type,
    evaluate: Callable[[str, Any, list[str]], Any],
    presets: Optional[dict[str, dict[str, Any]]] = None,
    epilog: str = "",
) -> int:
    """The command line of an evaluation tool: ``--checkpoint RUN`` and ``key=value`` options parsed
    into ``options_cls`` (on top of ``presets``), then ``evaluate(checkpoint, options, data_overrides)``;
    a siamssl error is one line and exit status 2."""
    args = eval_parser(prog, description, options_cls, epilog=epilog).parse_args(argv)

    def body() -> None:
        options, data_overrides = parse_overrides(args.overrides, options_cls, presets)
        evaluate(args.checkpoint, options, data_overrides)

    return run_cli(body)


def default_output(run: LoadedRun, tool: str, kind: str = "backbone") -> Path:
    """``RUN/<tool>[_projector][_random_init].json``."""
    suffix = ("_projector" if kind == "projector" else "") + ("_random_init" if run.random_init else "")
    return run.run_dir / f"{tool}{suffix}.json"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
