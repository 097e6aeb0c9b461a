"""Name -> component registries, so the trainer finds backbones, methods, datasets and monitors
without importing any of them directly.

An entry can carry a configuration dataclass: the config loader validates the matching YAML section
against it, so a new component brings its own keys and defaults without touching the trainer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Optional, TypeVar

from siamssl.errors import ConfigError

T = TypeVar("T")


def closest_match(name: str, candidates: list[str]) -> Optional[str]:
    """The candidate most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, candidates: list[str]) -> str:
    """``unknown method 'simsaim' (did you mean 'simsiam'?); choose from: ...``."""
    hint = closest_match(name, candidates)
    did_you_mean = f" (did you mean '{hint}'?)" if hint else ""
    return f"unknown {kind} '{name}'{did_you_mean}; choose from: {', '.join(sorted(candidates))}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component and, optionally, the dataclass describing its configuration."""

    name: str
    obj: T
    config: Optional[type] = None


class Registry(Generic[T]):
    """A named collection of components of one kind (``"method"``, ``"backbone"``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: Optional[type] = None) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("simsiam", config=SimSiamConfig)``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, obj, config)
            return obj

        return decorator

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

