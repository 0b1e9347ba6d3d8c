"""Small generated datasets shared by the training and command-line tests."""

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
