"""Training data: dataset configs, COCO/YOLO/VOC readers, YOLOX augmentations, fast loaders."""

from detector.data.augment import AugmentConfig
from detector.data.config import DataConfig, load_data_config
from detector.data.dataset import DetectionDataset, build_dataset
from detector.data.loader import (
    EvalBatch,
    TrainBatch,
    TrainLoader,
    build_eval_loader,
    build_train_loader,
    resize_batch,
)
from detector.data.targets import DataError, Sample

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DataError",
    "DetectionDataset",
    "EvalBatch",
    "Sample",
    "TrainBatch",
    "TrainLoader",
    "build_dataset",
    "build_eval_loader",
    "build_train_loader",
    "load_data_config",
    "resize_batch",
]
