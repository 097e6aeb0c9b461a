"""Datasets (decoded once into uint8 caches), augmentation recipes and deterministic loaders."""

from siamssl.data.augment import PRESETS, view_transforms
from siamssl.data.batched import BatchedAugment
from siamssl.data.config import AugmentConfig, DataConfig, ShapesConfig
from siamssl.data.datasets import DATASETS, ImageSplit, LabeledImages, build_dataset
from siamssl.data.loader import BatchedTrainLoader, TrainLoader, build_train_loader, eval_batches

__all__ = [
    "DATASETS",
    "PRESETS",
    "AugmentConfig",
    "BatchedAugment",
    "BatchedTrainLoader",
    "DataConfig",
    "ImageSplit",
    "LabeledImages",
    "ShapesConfig",
    "TrainLoader",
    "build_dataset",
    "build_train_loader",
    "eval_batches",
    "view_transforms",
]
