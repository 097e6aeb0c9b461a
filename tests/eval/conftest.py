"""A seconds-long SimSiam run shared by the evaluation tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw

ALL_MONITORS = "eval.monitors=[knn, embedding_std, online_probe, diagnostics]"


def train_tiny(run_dir: Path, *overrides: str, method: str = "simsiam") -> dict:
    """Train the tiny config of ``method`` into ``run_dir``; returns the summary."""
    return Trainer(config_from_dict(tiny_raw(run_dir, *overrides, method=method))).fit()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run with every monitor, the random-init kNN and diagnostics included."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train_tiny(run_dir, ALL_MONITORS, "eval.knn.random_init=true", "eval.diagnostics.random_init=true")
    return run_dir
