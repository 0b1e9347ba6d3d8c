"""One small exported ONNX model for the deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nano, 3 classes, 128 px, dynamic batch, exported with this environment's PyTorch."""
    import torch

    from detector.engine.checkpoint import save_atomic
    from detector.models import build_model
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("slim_model")
    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=3)
    with torch.no_grad():  # scores spread over 0-1 instead of the 1e-4 of the objectness prior
        for conv in (*model.head.obj_preds, *model.head.cls_preds):
            conv.bias.normal_(0.0, 1.5)
    meta = {"model_name": "yolox_nano", "num_classes": 3, "class_names": ["a", "b", "c"],
            "input_size": [128, 128]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / "nano.pt")
    return export_onnx(weights, folder / "nano.onnx", dynamic=True)
