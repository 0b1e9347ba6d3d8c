"""The YOLOX model family: building, configs, checkpoints, fusion and cost.

``build_model(name, num_classes=80)`` builds ``yolox_nano``, ``yolox_tiny``, ``yolox_s``,
``yolox_m``, ``yolox_l``, ``yolox_x`` or ``yolox_darknet53`` from ``configs/models/<name>.yaml``;
its state-dict keys are those of the official YOLOX, whose ``.pth`` files load strictly.
"""

from detector.models.build import build_from_config, build_model
from detector.models.checkpoint import (
    CheckpointError,
    CheckpointSpec,
    checkpoint_meta,
    checkpoint_spec,
    load_checkpoint,
    load_inference_model,
    load_state,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.models.complexity import count_gflops, count_parameters
from detector.models.config import ModelConfig, get_model_config, model_names
from detector.models.fuse import fuse_model
from detector.models.yolox import YOLOX

__all__ = [
    "YOLOX",
    "CheckpointError",
    "CheckpointSpec",
    "ModelConfig",
    "build_from_config",
    "build_model",
    "checkpoint_meta",
    "checkpoint_spec",
    "count_gflops",
    "count_parameters",
    "fuse_model",
    "get_model_config",
    "load_checkpoint",
    "load_inference_model",
    "load_state",
    "model_from_checkpoint",
    "model_names",
    "read_checkpoint",
]
