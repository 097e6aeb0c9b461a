"""Typed configuration sections: validation of nested dicts against dataclasses.

Every error names the full dotted key: an unknown key with the closest valid one, a wrong value with
the expected type. YAML 1.1 reads ``5e-4`` as a string, so numeric strings are accepted for numbers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from siamssl.errors import ConfigError
from siamssl.registry import closest_match

_MISSING = object()


def type_name(tp: Any) -> str:
    """Human name of a type annotation: ``int``, ``float or null``, ``one of 'sgd', 'lars'``..."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin in (list, tuple):
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {type_name(args[0])}s"
        return f"a list of {type_name(args[0])}s" if args else "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except (_Mismatch, ConfigError):
                continue
        raise _Mismatch
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, (float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch from None
            if number.is_integer():
                return int(number)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        element = args[0] if args else Any
        items = [_coerce(v, element, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:  # a free mapping (timm's keyword arguments): its keys are checked by its owner
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        value_type = get_args(tp)[1] if get_args(tp) else Any
        return {k: _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return build_section(tp, value, key)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _resolved_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of a section, dotted: ``["epochs", "max_steps", ...]``."""
    keys = []
    for f, tp in _resolved_fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            keys.extend(dotted_keys(tp, name + "."))
        else:
            keys.append(name)
    return keys


def unknown_key_error(key: str, valid: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    hint = closest_match(key, valid)
    if hint is None:  # the leaf alone may match a key in another section
        same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == leaf]
        hint = same_leaf[0] if same_leaf else closest_match(leaf, valid)
    suffix = f"; did you mean '{hint}'?" if hint else ""
    return ConfigError(f"unknown config key '{key}'{suffix}")


def build_section(cls: type, raw: dict, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, validating keys and types; missing keys take defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{prefix}' must be a mapping, got {raw!r}")
    fields = _resolved_fields(cls)
    names = {f.name for f, _ in fields}
    for key in raw:
        if key not in names:
            raise unknown_key_error(f"{prefix}.{key}" if prefix else str(key), [f"{prefix}.{k}" if prefix else k for k in dotted_keys(cls)])
    values = {}
    for f, tp in fields:
        if f.name not in raw:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        try:
            values[f.name] = _coerce(raw[f.name], tp, key)
        except _Mismatch:
            raise ConfigError(f"config key '{key}' must be {type_name(tp)}, got {raw[f.name]!r}") from None
    try:
        return cls(**values)
    except ConfigError:  # a section's own check (``__post_init__``) already names its key
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section '{prefix}': {exc}") from None


def section_to_dict(obj: Any) -> Any:
    """Plain dicts/lists/scalars (tuples become lists) — safe for YAML, JSON and ``weights_only`` loads."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: section_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [section_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: section_to_dict(v) for k, v in obj.items()}
    return obj
