"""Shared helpers: tiny, fast configurations on the built-in dataset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from siamssl.train.config import apply_override

torch.set_num_threads(2)

TINY_RAW: dict[str, Any] = {
    "method": {"name": "simsiam", "proj_dim": 64, "proj_layers": 2, "pred_hidden_dim": 16},
    "backbone": {"name": "resnet_narrow", "cifar_stem": True, "widths": [8, 16, 16, 32]},
    "data": {
        "dataset": "shapes",
        "batch_size": 16,
        "num_workers": 0,
        "shapes": {"num_train": 64, "num_test": 32, "image_size": 16},
        "augment": {"crop_size": 16},
    },
    "optim": {"base_lr": 0.05, "weight_decay": 5e-4},
    "trainer": {"epochs": 2, "progress_bar": False, "log_every_steps": 2},
    "eval": {"every_n_epochs": 1, "monitors": ["knn", "embedding_std"], "knn": {"k": 10}},
}


def tiny_raw(output_dir: Path, *overrides: str) -> dict[str, Any]:
    """A complete raw config for a seconds-long CPU run, with ``dotted.key=value`` overrides."""
    raw = copy.deepcopy(TINY_RAW)
    raw["output_dir"] = str(output_dir)
    for override in overrides:
        apply_override(raw, override)
    return raw


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
