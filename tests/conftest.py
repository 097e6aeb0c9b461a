"""Shared helpers: tiny, fast configurations on the built-in dataset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from siamssl.config import apply_override

# The tests run tiny tensors, for which intra-op parallelism only adds thread hand-off cost.
torch.set_num_threads(1)

TINY_CONFIGS = Path(__file__).parent / "tiny_configs"

TINY_RAW: dict[str, Any] = {
    "backbone": {"name": "resnet_narrow", "cifar_stem": True, "widths": [8, 16, 16, 32]},
    "data": {
        "dataset": "shapes",
        "batch_size": 16,
        "num_workers": 0,
        "shapes": {"num_train": 64, "num_test": 32, "image_size": 16, "layout": "single"},
        "augment": {"crop_size": 16},
    },
    "optim": {"base_lr": 0.05, "weight_decay": 5e-4},
    "trainer": {"epochs": 2, "progress_bar": False, "log_every_steps": 2},
    "eval": {"every_n_epochs": 1, "monitors": ["knn", "embedding_std"], "knn": {"k": 10}},
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``extra`` (new dict)."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def tiny_method_names() -> list[str]:
    """Methods with a tiny test configuration in ``tests/tiny_configs/<name>.yaml``."""
    return sorted(p.stem for p in TINY_CONFIGS.glob("*.yaml"))


def tiny_raw(output_dir: Path, *overrides: str, method: str = "simsiam") -> dict[str, Any]:
    """A complete raw config for a seconds-long CPU run of ``method`` (its tiny options from
    ``tests/tiny_configs/<method>.yaml`` over the shared base), with ``dotted.key=value`` overrides."""
    raw = deep_merge(TINY_RAW, yaml.safe_load((TINY_CONFIGS / f"{method}.yaml").read_text()))
    raw["output_dir"] = str(output_dir)
    for override in overrides:
        apply_override(raw, override)
    return raw


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
