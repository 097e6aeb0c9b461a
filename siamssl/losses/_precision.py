"""Losses run in float32 whatever the surrounding autocast: normalization, temperature softmax and
cross-correlation are the numerically sensitive parts of SSL training."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Tensor])


def float32_loss(fn: F) -> F:
    """Decorator: disable autocast and upcast floating-point tensor arguments to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        def upcast(value):  # type: ignore[no-untyped-def]
            return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value

        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*[upcast(a) for a in args], **{k: upcast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
