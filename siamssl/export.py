"""Export a trained backbone for other code (detection, segmentation, fine-tuning).

``python -m siamssl.export --checkpoint RUN/ [--format auto|torchvision|timm|backbone] [--output PATH] [--num-classes N]``

* ``torchvision``: the backbone's ``state_dict`` in torchvision's naming, checked against
  ``torchvision.models.<name>``: it loads with ``strict=True`` into e.g. ``resnet50()`` once ``fc`` is
  added back (``--num-classes N`` adds a fresh ``fc`` with N outputs, weights N(0, 0.01) and bias 0,
  so ``resnet50(num_classes=N).load_state_dict(sd)`` works as is). Backbones with the CIFAR stem
  keep their 3×3 ``conv1``: replace the torchvision model's ``conv1`` and ``maxpool`` first (the
  command prints how).
  This covers siamssl's ``resnet18/34/50`` and the ``torchvision`` backbone (``backbone.model``:
  ResNet ``fc``, ViT ``heads.head`` or ConvNeXt ``classifier.2`` is the classifier left out).
* ``timm``: a ``backbone.name: timm`` backbone's ``state_dict`` in timm's own naming, checked against
  ``timm.create_model(backbone.model, **backbone.kwargs)``: it loads with ``strict=True`` once the
  classifier (``pretrained_cfg['classifier']``) is added back or removed with ``reset_classifier(0)``
  (``--num-classes N`` adds a fresh one).
* ``backbone``: the siamssl backbone's ``state_dict`` as is, for any backbone.
* ``auto`` (default): ``timm`` for timm backbones, ``torchvision`` otherwise.

Writes ``NAME.pt`` (a plain state_dict for ``torch.load``), ``NAME.safetensors`` when the
``safetensors`` package is installed, and ``NAME.json`` (architecture, feature size, source).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from siamssl.errors import ConfigError, SiamSSLError

FORMATS = ("auto", "torchvision", "timm", "backbone")


def backbone_state(model_state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a method's state_dict under ``prefix.``, with the prefix removed."""
    head = prefix + "."
    state = {key[len(head):]: value for key, value in model_state.items() if key.startswith(head)}
    if not state:
        modules = sorted({key.split(".", 1)[0] for key in model_state if "." in key})
        hint = f"; modules in this checkpoint: {', '.join(modules)}" if modules else ""
        raise ConfigError(f"the checkpoint has no parameters under '{prefix}'{hint}")
    return state


def torchvision_reference(name: str) -> Optional[torch.nn.Module]:
    """``torchvision.models.<name>()`` (random weights), or None when torchvision has no such model."""
    import torchvision.models as models

    builder = getattr(models, name, None)
    if builder is None or not callable(builder) or name.startswith("_"):
        return None
    try:
        return builder(weights=None)
    except TypeError:
        return None


def torchvision_target(backbone_name: str, backbone_options: dict[str, Any]) -> tuple[Optional[torch.nn.Module], str, str]:
    """(torchvision reference model or None, its name, its classifier module) for a configured backbone."""
    if backbone_name == "torchvision":
        import torchvision.models as models

        from siamssl.backbones.external import torchvision_head

        model = backbone_options["model"]
        with torch.device("meta"):
            reference = models.get_model(model, weights=None, **backbone_options.get("kwargs", {}))
        return reference, model, torchvision_head(model)
    return torchvision_reference(backbone_name), backbone_name, "fc"


def _classifier_free(reference: torch.nn.Module, heads: tuple[str, ...]) -> dict[str, Tensor]:
    return {k: v for k, v in reference.state_dict().items() if not any(k.startswith(h + ".") for h in heads)}


def _check_keys(state: dict[str, Tensor], expected: dict[str, Tensor], target: str, fmt: str) -> None:
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"the backbone does not match {target}: missing {missing[:3]}, unexpected {unexpected[:3]}; use --format backbone"
            if fmt == "torchvision" else
            f"the backbone does not match {target}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _cifar_stem_note(state: dict[str, Tensor]) -> str:
    width, channels = state["conv1.weight"].shape[:2]
    return (
        f"CIFAR stem: before loading, set model.conv1 = torch.nn.Conv2d({channels}, {width}, kernel_size=3, stride=1, "
        "padding=1, bias=False) and model.maxpool = torch.nn.Identity()"
    )


def to_timm(state: dict[str, Tensor], backbone_options: dict[str, Any]) -> tuple[dict[str, Tensor], list[str], str]:
    """Check that ``state`` is ``timm.create_model(model, **kwargs)`` without its classifier; returns
    the state, notes (the CIFAR stem to mirror) and the classifier module's name."""
    from siamssl.backbones.external import timm_classifier_prefixes, timm_reference

    model = backbone_options["model"]
    reference = timm_reference(model, backbone_options.get("kwargs", {}))
    heads = timm_classifier_prefixes(reference)
    expected = _classifier_free(reference, heads)
    _check_keys(state, expected, f"timm's {model}", "timm")
    for key, value in state.items():
        if value.shape != expected[key].shape and not (key == "conv1.weight" and backbone_options.get("cifar_stem")):
            raise ConfigError(f"'{key}' has shape {tuple(value.shape)} but timm's {model} has {tuple(expected[key].shape)}")
    notes = [_cifar_stem_note(state)] if backbone_options.get("cifar_stem") else []
    return state, notes, heads[0] if heads else "head"


def to_torchvision(state: dict[str, Tensor], backbone_name: str, backbone_options: dict[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """Check that ``state`` is ``torchvision.models.<name>`` without its classifier; returns the state
    and notes (stem changes the user has to mirror on the torchvision model)."""
    reference, target, head = torchvision_target(backbone_name, backbone_options)
    if reference is None:
        raise ConfigError(
            f"backbone '{backbone_name}' has no torchvision model to export to; use --format backbone "
            "(the siamssl backbone's state_dict)"
        )
    backbone_name = target
    expected = _classifier_free(reference, (head,))
    _check_keys(state, expected, f"torchvision's {backbone_name}", "torchvision")
    notes = []
    for key, value in state.items():
        if value.shape != expected[key].shape:
            if key == "conv1.weight" and (backbone_options.get("cifar_stem") or backbone_options.get("in_channels", 3) != 3):
                continue
            raise ConfigError(f"'{key}' has shape {tuple(value.shape)} but torchvision's {backbone_name} has {tuple(expected[key].shape)}")
    if backbone_options.get("cifar_stem"):
        notes.append(_cifar_stem_note(state))
    elif backbone_options.get("in_channels", 3) != 3:
        width, channels = state["conv1.weight"].shape[:2]
        notes.append(
            f"{channels} input channels: before loading, set model.conv1 = torch.nn.Conv2d({channels}, {width}, kernel_size=7, "
            "stride=2, padding=3, bias=False)"
        )
    return state, notes


def add_classifier(state: dict[str, Tensor], feature_dim: int, num_classes: int, seed: int = 0,
                   head: str = "fc") -> dict[str, Tensor]:
    """``state`` plus a fresh linear classifier ``head`` (weights N(0, 0.01), bias 0) mapping
    ``feature_dim`` to ``num_classes``."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, feature_dim, generator=generator) * 0.01
    return {**state, f"{head}.weight": weight, f"{head}.bias": torch.zeros(num_classes)}


def export(checkpoint: str | Path, fmt: str = "auto", output: Optional[str | Path] = None,
           prefix: str = "backbone", num_classes: Optional[int] = None, quiet: bool = False) -> list[Path]:
    """Export a checkpoint's backbone; returns the files written."""
    from siamssl.backbones import build_backbone
    from siamssl.eval.runs import config_of, resolve_checkpoint, run_directory
    from siamssl.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose from: {', '.join(FORMATS)}")
    path = resolve_checkpoint(checkpoint)
    checkpoint_state = load_checkpoint(path)
    cfg = config_of(checkpoint_state)
    options = asdict(cfg.backbone.options)
    state = {k: v.detach().clone().contiguous() for k, v in backbone_state(checkpoint_state["model"], prefix).items()}
    backbone, feature_dim = build_backbone(cfg.backbone.name, **options)
    try:
        backbone.load_state_dict(state)  # the weights are what the configured backbone expects
    except RuntimeError as exc:
        raise SiamSSLError(f"'{prefix}' in {path} is not a {cfg.backbone.name} backbone: {str(exc).splitlines()[0]}") from None
    notes: list[str] = []
    if fmt == "auto":
        fmt = "timm" if cfg.backbone.name == "timm" else "torchvision"
    if fmt == "timm" and cfg.backbone.name != "timm":
        raise ConfigError(f"--format timm needs a backbone.name=timm run; this one has backbone '{cfg.backbone.name}'")
    if fmt == "torchvision":
        state, notes = to_torchvision(state, cfg.backbone.name, options)
        if num_classes is not None:
            state = add_classifier(state, feature_dim, num_classes, head=torchvision_target(cfg.backbone.name, options)[2])
    elif fmt == "timm":
        state, notes, head = to_timm(state, options)
        if num_classes is not None:
            state = add_classifier(state, feature_dim, num_classes, head=head)
    elif num_classes is not None:
        raise ConfigError("--num-classes applies to --format torchvision and timm")
    architecture = options["model"] if cfg.backbone.name in ("timm", "torchvision") else cfg.backbone.name
    stem = Path(output) if output else run_directory(path) / "export" / f"{architecture}_{fmt}"
    if stem.suffix in (".pt", ".pth", ".safetensors"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = [stem.with_suffix(".pt")]
    torch.save(state, written[0])
    try:
        from safetensors.torch import save_file
    except ImportError:
        notes.append("safetensors is not installed (pip install safetensors): wrote the .pt file only")
    else:
        written.append(stem.with_suffix(".safetensors"))
        save_file(state, str(written[-1]), metadata={"format": fmt, "architecture": architecture})
    meta = {
        "format": fmt,
        "architecture": architecture,
        "backbone": cfg.backbone.name,
        "backbone_options": options,
        "feature_dim": feature_dim,
        "num_classes": num_classes,
        "source_checkpoint": str(path),
        "method": cfg.method.name,
        "global_step": checkpoint_state.get("global_step"),
        "notes": notes,
    }
    written.append(stem.with_suffix(".json"))
    written[-1].write_text(json.dumps(meta, indent=2) + "\n")
    if not quiet:
        for note in notes:
            print(f"siamssl: note: {note}", file=sys.stderr)
        print(f"siamssl: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    parser = argparse.ArgumentParser(
        prog=called if called.startswith("siamssl-") else "python -m siamssl.export",
        description="Export a trained backbone's weights (torchvision naming or as is).",
        epilog="example: python -m siamssl.export --checkpoint runs/simsiam --format torchvision\n"
        "then: m = torchvision.models.resnet50(); m.fc = torch.nn.Identity(); m.load_state_dict(torch.load(PATH))",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint .pt file, or a run directory (→ checkpoints/last.pt)")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="torchvision or timm naming (auto, the default: timm for timm backbones), or backbone (as is)")
    parser.add_argument("--output", help="output path without extension (default RUN/export/<backbone>_<format>)")
    parser.add_argument("--prefix", default="backbone", help="which module of the method to export (default: backbone)")
    parser.add_argument("--num-classes", type=int, help="add a fresh classifier with this many outputs (torchvision, timm formats)")
    args = parser.parse_args(argv)
    from siamssl.eval.runs import run_cli

    return run_cli(lambda: export(args.checkpoint, args.format, args.output, args.prefix, args.num_classes))


if __name__ == "__main__":
    from siamssl.export import main as _main

    sys.exit(_main())
