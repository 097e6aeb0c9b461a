"""Pretraining: ``python -m siamssl.train --config configs/simsiam.yaml [key=value ...]``."""

from siamssl.config import Config, load_config
from siamssl.train.trainer import Trainer, train

__all__ = ["Config", "Trainer", "load_config", "train"]
