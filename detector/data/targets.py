"""Targets where they enter: ``boxes`` (xyxy pixels, float32 ``[K, 4]``) + ``labels`` (int64).

Readers build one ``Record`` per image; ``sanitize_boxes`` clips boxes partly outside the image
and drops the degenerate ones (under 1 px wide or high), returning counts so that a dataset logs
one line, not one per box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIN_BOX_SIZE = 1.0


class DataError(ValueError):
    """Bad data: the message names the file (and the line or annotation id) at fault."""


@dataclass
class Record:
    """One image as an annotation file describes it (no pixels yet).

    ``width``/``height`` are the image size the annotation states (0 when unknown).
    """

    path: Path
    image_id: int
    boxes: np.ndarray  # float32 [K, 4] xyxy pixels
    labels: np.ndarray  # int64 [K]
    width: int = 0
    height: int = 0
    areas: np.ndarray | None = None  # float32 [K] areas from the annotation file (COCO), if any
    crowd: list[dict] = field(default_factory=list)  # COCO iscrowd=1 annotations, evaluation only


@dataclass
class Sample:
    """One decoded image and its targets: ``image`` BGR uint8 ``[H, W, 3]``, ``boxes`` float32
    ``[K, 4]`` xyxy pixels, ``labels`` int64 ``[K]``."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    path: Path = field(default_factory=Path)


@dataclass
class SanitizeStats:
    """How many boxes a dataset clipped and dropped."""

    clipped: int = 0
    dropped: int = 0

    def add(self, other: SanitizeStats) -> None:
        self.clipped += other.clipped
        self.dropped += other.dropped


def empty_targets() -> tuple[np.ndarray, np.ndarray]:
    """``(float32 [0, 4], int64 [0])``."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def sanitize_boxes(
    boxes: np.ndarray, labels: np.ndarray, width: float, height: float
) -> tuple[np.ndarray, np.ndarray, SanitizeStats, np.ndarray]:
    """Clip ``[K, 4]`` xyxy boxes to ``width`` x ``height`` and drop those under 1 px.

    Returns float32 boxes, int64 labels, the counts of clipped and dropped boxes, and the bool
    ``[K]`` mask of the boxes kept.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    stats = SanitizeStats()
    if len(boxes) == 0:
        return boxes, labels, stats, np.ones(0, bool)
    if width > 0 and height > 0:
        clipped = boxes.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
        changed = np.any(clipped != boxes, axis=1)
        boxes = clipped
    else:
        changed = np.zeros(len(boxes), bool)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & (
        (boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE
    )
    stats.clipped = int((changed & keep).sum())
    stats.dropped = int((~keep).sum())
    return boxes[keep], labels[keep], stats, keep


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise ``DataError`` naming ``where`` if a label is outside ``[0, num_classes)``."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"{where}: class id {int(labels[bad][0])} out of range [0, {num_classes})")
