"""Paths of the real data used by the data tests (BCCD in ../shared beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BCCD_VOC = REPO / "configs/data/bccd.yaml"
BCCD_COCO = REPO / "configs/data/bccd_coco.yaml"
BCCD_PRESENT = (REPO.parent / "shared/data/bccd/coco/instances_train.json").is_file()

needs_bccd = pytest.mark.skipif(not BCCD_PRESENT, reason="../shared/data/bccd not present")
