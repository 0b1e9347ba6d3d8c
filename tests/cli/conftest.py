"""A model trained by ``detector train`` once for all CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.cli import main


@pytest.fixture(scope="session")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a 2-epoch yolox_nano run at 128 px on the tiny dataset."""
    out = tmp_path_factory.mktemp("cli_runs")
    code = main([
        "train", "--model", "yolox_nano", "--data", str(tiny_data), "epochs=2", "batch=4",
        "imgsz=128", "workers=0", "device=cpu", f"output_dir={out}", "name=cli",
    ])  # fmt: skip
    assert code == 0
    return out / "cli"


@pytest.fixture(scope="session")
def lively(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random yolox_nano checkpoint (128 px, the tiny dataset's 3 classes) whose scores
    spread over 0-1 and depend on the image: two training epochs leave every score under 1e-3,
    and the predict tests need detections of several classes."""
    import torch

    from detector.models import build_model
    from detector.training.checkpoint import save_atomic

    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=3)
    with torch.no_grad():
        for conv in (*model.head.obj_preds, *model.head.cls_preds):
            conv.bias.normal_(0.0, 1.5)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    meta = {"model_name": "yolox_nano", "num_classes": 3, "input_size": [128, 128],
            "class_names": ["circle", "rectangle", "triangle"]}  # fmt: skip
    path = tmp_path_factory.mktemp("lively") / "lively.pt"
    return save_atomic({"model": model.state_dict(), "meta": meta}, path)
