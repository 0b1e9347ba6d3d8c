"""Paths of the real data used by the data tests: BCCD, shipped in the repository's data/bccd."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BCCD_VOC = REPO / "configs/data/bccd.yaml"
BCCD_COCO = REPO / "configs/data/bccd_coco.yaml"
BCCD_ROOT = REPO / "data/bccd"
