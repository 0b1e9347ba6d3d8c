"""Shared fixtures for the data tests: a small generated dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.data.synth import SynthSpec, make_synthetic_dataset

SMALL = SynthSpec(image_size=(96, 160), object_size=(16, 64), objects=(0, 6), num_classes=3)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.yaml of 24 small generated images (3 classes)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), images=24, seed=1, spec=SMALL)
