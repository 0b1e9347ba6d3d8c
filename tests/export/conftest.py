"""Randomly initialised checkpoints in our format, made lively enough to produce detections."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from detector.models import build_model
from detector.training.checkpoint import save_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from golden_fill import fill_state_dict  # noqa: E402 - the deterministic weights of tests/models

CLASS_NAMES = ["red", "green", "blue"]
IMGSZ = 128


def lively_checkpoint(path: Path, name: str, seed: int = 0, imgsz: int = IMGSZ) -> Path:
    """Save a ``name`` model with random weights as our checkpoint (``model`` + ``meta``).

    A fresh model's objectness prior (0.01) scores every anchor near 1e-4; its prediction biases
    are redrawn here so that scores spread over 0-1 and every image has detections to compare.
    """
    torch.manual_seed(seed)
    model = build_model(name, num_classes=len(CLASS_NAMES))
    with torch.no_grad():
        for conv in (*model.head.obj_preds, *model.head.cls_preds):
            conv.bias.normal_(0.0, 1.5)
        for module in model.modules():  # non-trivial batch norm, so that fusing matters
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(path, model, imgsz)


def golden_checkpoint(path: Path, name: str = "yolox_nano", gain: float = 1.075) -> Path:
    """A checkpoint with the golden tests' deterministic weights: at this gain its scores
    depend on the image (a blank image scores lower than a busy one), so a high threshold
    leaves different numbers of detections per image, and none on a blank one."""
    model = build_model(name, num_classes=len(CLASS_NAMES))
    model.load_state_dict(fill_state_dict(model.state_dict(), gain))
    return save_checkpoint(path, model, IMGSZ)


def save_checkpoint(path: Path, model: torch.nn.Module, imgsz: int) -> Path:
    """Our checkpoint format: ``{"model": state dict, "meta": {...}}``."""
    meta = {
        "model_name": model.name,
        "num_classes": len(CLASS_NAMES),
        "class_names": CLASS_NAMES,
        "input_size": [imgsz, imgsz],
    }
    return save_atomic({"model": model.state_dict(), "meta": meta}, path)


@pytest.fixture(scope="session")
def nano_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lively_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano.pt", "yolox_nano", seed=1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lively_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "yolox_tiny", seed=2)


@pytest.fixture(scope="session")
def golden_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return golden_checkpoint(tmp_path_factory.mktemp("ckpt") / "golden_nano.pt")


@pytest.fixture(scope="session")
def exported_variants(golden_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The NMS and FP16 graphs, once per session (nano, 128 px): name -> ONNX path."""
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("variants")
    variants = {  # plain graphs (fixed and dynamic batch) are exported in test_export_onnx
        "nms_dynamic": {"dynamic": True, "nms": True},
        "half_dynamic": {"dynamic": True, "half": True},
        "half_nms": {"batch": 2, "half": True, "nms": True},
    }
    return {
        name: export_onnx(golden_ckpt, folder / f"{name}.onnx", **options)
        for name, options in variants.items()
    }
