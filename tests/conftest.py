"""Small generated datasets shared by the training and command-line tests, and one small exported
ONNX model shared by the serving and deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detector.data.synth import SynthSpec, make_synthetic_dataset

EASY = SynthSpec(image_size=(96, 128), object_size=(28, 64), objects=(1, 3), num_classes=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-image generated COCO dataset (26 train / 6 val) of large, easy objects."""
    out = tmp_path_factory.mktemp("tiny_data")
    return make_synthetic_dataset(out, images=32, seed=3, spec=EASY)


@pytest.fixture(scope="session")
def memorise_data(tiny_data: Path) -> Path:
    """The same dataset with the training split also used for validation (to overfit on)."""
    config = yaml.safe_load(tiny_data.read_text())
    config["val"] = config["train"]
    path = tiny_data.parent / "memorise.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def nano_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolox_nano, 3 classes ``a b c``, 128 px, dynamic batch, exported with this environment's
    PyTorch; its checkpoint ``nano.pt`` lies beside it. Detection heads' biases are spread so
    scores cover 0-1 instead of the 1e-4 of the objectness prior."""
    import torch

    from detector.models import build_model
    from detector.training.checkpoint import save_atomic
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("nano_model")
    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=3)
    with torch.no_grad():
        for conv in (*model.head.obj_preds, *model.head.cls_preds):
            conv.bias.normal_(0.0, 1.5)
    meta = {"model_name": "yolox_nano", "num_classes": 3, "class_names": ["a", "b", "c"],
            "input_size": [128, 128]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / "nano.pt")
    return export_onnx(weights, folder / "nano.onnx", dynamic=True)
