"""Training augmentation settings and primitives as YOLOX defines them, each random one driven
by an explicit ``numpy.random.Generator`` (no global random state).

* ``AugmentConfig``: YOLOX's settings and its per-size defaults (``for_model``).
* ``random_affine_matrix``: YOLOX's rotation/scale/shear/translation draw, used by the Mosaic
  (``detector.data.mosaic``, which also does MixUp).
* ``augment_hsv``: random additive hue/saturation/value offsets (YOLOX gains 5/30/30) done with
  a lookup table on uint8; ``hflip``: mirror image and boxes.
* ``transform_boxes`` / ``finalize_boxes``: boxes through an affine; clip and keep those over
  1 px. ``reduce_factor``: how much smaller a JPEG may be decoded for a given final scale.

The per-sample pipeline (Mosaic, MixUp, then YOLOX's TrainTransform: HSV, flip, letterbox) is
``detector.data.loader.train_sample``. Boxes are float32 ``[K, 4]`` xyxy pixels, labels int64
``[K]``, images BGR uint8 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MIN_SIDE = 1.0  # YOLOX drops boxes whose width or height is not above 1 px


@dataclass
class AugmentConfig:
    """YOLOX training augmentation settings (``yolox_base`` defaults)."""

    mosaic_prob: float = 1.0
    mixup_prob: float = 1.0
    hsv_prob: float = 1.0
    flip_prob: float = 0.5
    degrees: float = 10.0
    translate: float = 0.1
    mosaic_scale: tuple[float, float] = (0.1, 2.0)
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    shear: float = 2.0
    enable_mixup: bool = True
    hsv_gains: tuple[int, int, int] = (5, 30, 30)

    @classmethod
    def for_model(cls, name: str) -> AugmentConfig:
        """YOLOX's per-size defaults: nano and tiny use mosaic scale 0.5-1.5 and no MixUp (nano
        also mosaic_prob 0.5); s and larger keep the base defaults."""
        size = name.removeprefix("yolox_")
        if size == "nano":
            return cls(mosaic_scale=(0.5, 1.5), enable_mixup=False, mosaic_prob=0.5)
        if size == "tiny":
            return cls(mosaic_scale=(0.5, 1.5), enable_mixup=False)
        return cls()


# ------------------------------------------------------------------------------------- boxes
def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Axis-aligned hull of ``[K, 4]`` xyxy boxes after the 2x3 affine ``matrix``."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 4, 2)  # [K, 4 corners, xy]
    moved = corners @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    return np.concatenate([moved.min(1), moved.max(1)], axis=1).astype(np.float32)


def finalize_boxes(
    boxes: np.ndarray, labels: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Clip to ``width`` x ``height`` and keep boxes wider and higher than 1 px."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) > MIN_SIDE) & ((boxes[:, 3] - boxes[:, 1]) > MIN_SIDE)
    return boxes[keep], np.asarray(labels, np.int64)[keep]


# ----------------------------------------------------------------------------------- colour
def augment_hsv(
    image: np.ndarray, rng: np.random.Generator, gains: tuple[int, int, int] = (5, 30, 30)
) -> np.ndarray:
    """Random offsets in H (wrapping at 180), S and V (clipped), each channel switched on with
    probability 1/2 (YOLOX). ``[H, W, 3]`` uint8 BGR in, new array out."""
    offsets = rng.uniform(-1, 1, 3) * np.asarray(gains) * rng.integers(0, 2, 3)
    offsets = offsets.astype(np.int16)
    if not offsets.any():
        return image
    x = np.arange(256, dtype=np.int16)
    lut = np.stack(
        [(x + offsets[0]) % 180, np.clip(x + offsets[1], 0, 255), np.clip(x + offsets[2], 0, 255)],
        axis=-1,
    ).astype(np.uint8)[:, None, :]  # [256, 1, 3]
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2BGR)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: ``[H, W, 3]`` image and ``[K, 4]`` xyxy boxes."""
    width = image.shape[1]
    out = boxes.copy()
    out[:, [0, 2]] = width - boxes[:, [2, 0]]
    return cv2.flip(image, 1), out


# ------------------------------------------------------------------------------------ affine
def random_affine_matrix(
    rng: np.random.Generator,
    size_hw: tuple[int, int],
    degrees: float,
    translate: float,
    scale_range: tuple[float, float],
    shear: float,
) -> tuple[np.ndarray, float]:
    """YOLOX's random affine: rotation and scale about the origin, shear, translation of up to
    ``translate`` x the output size. Returns (float64 ``[2, 3]``, scale)."""
    height, width = size_hw
    angle = math.radians(rng.uniform(-degrees, degrees))
    scale = rng.uniform(*scale_range)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    rot = np.array([[cos, sin], [-sin, cos]])  # cv2.getRotationMatrix2D about (0, 0)
    shear_x = math.tan(math.radians(rng.uniform(-shear, shear)))
    shear_y = math.tan(math.radians(rng.uniform(-shear, shear)))
    matrix = np.zeros((2, 3))
    matrix[0, :2] = rot[0] + shear_y * rot[1]
    matrix[1, :2] = rot[1] + shear_x * rot[0]
    matrix[0, 2] = rng.uniform(-translate, translate) * width
    matrix[1, 2] = rng.uniform(-translate, translate) * height
    return matrix, scale


def reduce_factor(scale: float) -> int:
    """Largest JPEG decode reduction (1, 2, 4, 8) that still leaves the image at least as large
    as the ``scale`` it will be resampled to."""
    for factor in (8, 4, 2):
        if scale * factor <= 1.0:
            return factor
    return 1
