"""The backbone registry: ``name -> builder(config) -> (module, feature_dim)``."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

from torch import nn

from siamssl.errors import ConfigError
from siamssl.registry import Registry, unknown_name_message

BackboneBuilder = Callable[[Any], "tuple[nn.Module, int]"]

BACKBONES: Registry[BackboneBuilder] = Registry("backbone")


def build_backbone(name: str, **options: Any) -> tuple[nn.Module, int]:
    """Build a registered backbone: ``build_backbone("resnet18", cifar_stem=True)``.

    Returns the module (mapping images (B, C, H, W) to features (B, feature_dim)) and feature_dim.
    """
    entry = BACKBONES.entry(name)
    if entry.config is None:
        return entry.obj(**options)
    valid = [f.name for f in fields(entry.config)]
    for key in options:
        if key not in valid:
            raise ConfigError(unknown_name_message(f"option of backbone '{name}'", key, valid))
    return entry.obj(entry.config(**options))
