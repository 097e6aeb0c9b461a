"""The method registry. A method class registers itself with its configuration dataclass
(``cls.Config``) and builds itself with ``cls.from_config(config, backbone, feature_dim, context)``."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

from siamssl.methods.base import MethodContext, SSLMethod
from siamssl.registry import Registry

METHODS: Registry[type[SSLMethod]] = Registry("method")

M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: ``@register_method("simsiam")`` on a class with a ``Config`` dataclass."""

    def decorator(cls: M) -> M:
        METHODS.register(name, config=cls.Config)(cls)
        return cls

    return decorator


def build_method(name: str, config: Any, backbone: nn.Module, feature_dim: int, context: MethodContext) -> SSLMethod:
    """Instantiate the registered method ``name`` from its validated config."""
    return METHODS.get(name).from_config(config, backbone, feature_dim, context)
