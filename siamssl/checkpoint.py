"""Checkpoints: written atomically (temporary file, fsync, rename) and loadable with
``torch.load(weights_only=True)`` — they hold only tensors, numbers, strings, lists and dicts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from siamssl.errors import SiamSSLError

CHECKPOINT_FORMAT = 1


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a siamssl checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    if not path.is_file():
        raise SiamSSLError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SiamSSLError(f"cannot read checkpoint '{path}': {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SiamSSLError(f"'{path}' is not a siamssl checkpoint (format {CHECKPOINT_FORMAT})")
    return state
