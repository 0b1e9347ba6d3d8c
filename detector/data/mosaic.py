"""Mosaic and MixUp (YOLOX semantics) on a ``DetectionDataset``, each image warped once.

YOLOX pastes four letterbox-resized images on a 2x canvas and warps the canvas down to the input
size. Here each tile goes straight from its decoded image to the output through the composed
transform (letterbox scale -> canvas offset -> random affine), warped only inside the tile's
footprint: the same picture with one interpolation instead of two and no 2x canvas. A tile that
the affine leaves out of the picture (common at scales above 1) is never decoded, and a tile
that ends up shrunk is decoded at 1/2, 1/4 or 1/8 size by libjpeg.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from detector.core.preprocess import PAD_VALUE
from detector.data.augment import (
    AugmentConfig,
    finalize_boxes,
    random_affine_matrix,
    reduce_factor,
    transform_boxes,
)
from detector.data.dataset import DetectionDataset

Targets = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, boxes, labels


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer`` after 2x3 ``inner``."""
    return outer[:, :2] @ inner + np.array([[0, 0, outer[0, 2]], [0, 0, outer[1, 2]]])


def fit_ratio(dataset: DetectionDataset, index: int, size_hw: tuple[int, int]) -> float:
    """Letterbox ratio of image ``index`` from its annotated size (0 when unknown)."""
    record = dataset.records[index]
    if not (record.width and record.height):
        return 0.0
    return min(size_hw[0] / record.height, size_hw[1] / record.width)


def warp_into(
    out: np.ndarray, src: np.ndarray, matrix: np.ndarray, region: tuple[float, ...]
) -> None:
    """Warp ``src`` with ``matrix`` (src pixels -> out pixels) into ``out`` in place, touching only
    the bounding box of ``region`` (x1, y1, x2, y2 in out pixels) and only pixels that map
    inside ``src`` (transparent border)."""
    height, width = out.shape[:2]
    x1, y1 = max(int(math.floor(region[0])), 0), max(int(math.floor(region[1])), 0)
    x2, y2 = min(int(math.ceil(region[2])), width), min(int(math.ceil(region[3])), height)
    if x2 <= x1 or y2 <= y1 or src.size == 0:
        return
    shifted = matrix.copy()
    shifted[:, 2] -= (x1, y1)
    roi = out[y1:y2, x1:x2]
    cv2.warpAffine(src, shifted, (x2 - x1, y2 - y1), dst=roi, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)  # fmt: skip


def tile_placement(
    k: int, xc: int, yc: int, w: int, h: int, size_hw: tuple[int, int]
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Tile ``k`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of a mosaic around
    ``(xc, yc)`` on the 2x canvas: (canvas rect, rect of the ``w`` x ``h`` resized image shown)."""
    height, width = size_hw
    if k == 0:
        a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        b = (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
    elif k == 1:
        a = (xc, max(yc - h, 0), min(xc + w, 2 * width), yc)
        b = (0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h)
    elif k == 2:
        a = (max(xc - w, 0), yc, xc, min(2 * height, yc + h))
        b = (w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h))
    else:
        a = (xc, yc, min(xc + w, 2 * width), min(2 * height, yc + h))
        b = (0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h))
    return a, b


def mosaic(
    dataset: DetectionDataset,
    indices: list[int],
    rng: np.random.Generator,
    size_hw: tuple[int, int],
    cfg: AugmentConfig,
) -> Targets:
    """Four images around a random centre, then YOLOX's random affine, into an ``size_hw``
    uint8 image. Returns (image ``[H, W, 3]``, boxes ``[K, 4]``, labels ``[K]``)."""
    height, width = size_hw
    yc = int(rng.uniform(0.5 * height, 1.5 * height))
    xc = int(rng.uniform(0.5 * width, 1.5 * width))
    affine, scale = random_affine_matrix(
        rng, size_hw, cfg.degrees, cfg.translate, cfg.mosaic_scale, cfg.shear
    )
    out = np.full((height, width, 3), PAD_VALUE, np.uint8)
    all_boxes, all_labels = [], []
    for k, index in enumerate(indices):
        record, sample = dataset.records[index], None
        if not (record.width and record.height):  # size unknown: decode to learn it
            sample = dataset.load(index)
            record.height, record.width = sample.image.shape[:2]
        h0, w0 = record.height, record.width
        r = min(height / h0, width / w0)
        a, b = tile_placement(k, xc, yc, int(w0 * r), int(h0 * r), size_hw)
        if a[2] <= a[0] or a[3] <= a[1]:
            continue
        footprint = transform_boxes(np.array([a], np.float32), affine)[0]
        if footprint[0] >= width or footprint[1] >= height or min(footprint[2:]) <= 0:
            continue  # the affine leaves this tile out of the picture: never decode it
        if sample is None:
            sample = dataset.load(index, reduce_factor(r * scale))
        fx, fy = w0 / sample.image.shape[1], h0 / sample.image.shape[0]  # decoded -> original
        # decoded pixels -> canvas: scale to the letterboxed size, shift the shown part b onto a
        to_canvas = np.array([[r * fx, 0.0, a[0] - b[0]], [0.0, r * fy, a[1] - b[1]]])
        sx0, sy0 = max(math.floor(b[0] / (r * fx)), 0), max(math.floor(b[1] / (r * fy)), 0)
        sx1 = min(math.ceil(b[2] / (r * fx)), sample.image.shape[1])
        sy1 = min(math.ceil(b[3] / (r * fy)), sample.image.shape[0])
        crop_shift = np.array([[1.0, 0.0, sx0], [0.0, 1.0, sy0]])
        matrix = _compose(affine, _compose(to_canvas, crop_shift))
        warp_into(out, sample.image[sy0:sy1, sx0:sx1], matrix, tuple(footprint))
        if len(sample.boxes):
            boxes = transform_boxes(sample.boxes, to_canvas)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(a[0], a[2])
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(a[1], a[3])
            all_boxes.append(transform_boxes(boxes, affine))
            all_labels.append(sample.labels)
    if not all_boxes:
        return out, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    boxes, labels = finalize_boxes(
        np.concatenate(all_boxes), np.concatenate(all_labels), width, height
    )
    return out, boxes, labels


def mixup(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    dataset: DetectionDataset,
    rng: np.random.Generator,
    cfg: AugmentConfig,
) -> Targets:
    """Blend 50/50 with another image that has boxes: letterboxed into the input size, scaled by
    a factor from ``cfg.mixup_scale``, flipped with probability 1/2, randomly cropped back to the
    input size (zero beyond its letterbox canvas, as in YOLOX)."""
    candidates = np.flatnonzero(dataset.has_boxes)
    if len(candidates) == 0:
        return image, boxes, labels
    height, width = image.shape[:2]
    jitter = rng.uniform(*cfg.mixup_scale)
    flip = rng.random() > 0.5
    index = int(candidates[rng.integers(len(candidates))])
    fit = fit_ratio(dataset, index, (height, width))
    sample = dataset.load(index, reduce_factor(fit * jitter) if fit else 1)
    h0, w0 = sample.image.shape[:2]
    r = min(height / h0, width / w0) * jitter
    canvas_w, canvas_h = int(width * jitter), int(height * jitter)
    pad_h, pad_w = max(canvas_h, height), max(canvas_w, width)
    y_off = int(rng.integers(0, pad_h - height)) if pad_h > height else 0
    x_off = int(rng.integers(0, pad_w - width)) if pad_w > width else 0
    if flip:
        matrix = np.array([[-r, 0.0, canvas_w - x_off], [0.0, r, -y_off]])
    else:
        matrix = np.array([[r, 0.0, -x_off], [0.0, r, -y_off]])

    other = np.zeros_like(image)
    cx1, cy1 = max(-x_off, 0), max(-y_off, 0)
    cx2, cy2 = min(canvas_w - x_off, width), min(canvas_h - y_off, height)
    other[cy1:cy2, cx1:cx2] = PAD_VALUE
    footprint = transform_boxes(np.array([[0, 0, w0, h0]], np.float32), matrix)[0]
    warp_into(other, sample.image, matrix, tuple(footprint))
    blended = cv2.addWeighted(image, 0.5, other, 0.5, 0.0)  # 0.5 * a + 0.5 * b
    new_boxes = transform_boxes(sample.boxes, matrix)
    new_boxes, new_labels = finalize_boxes(new_boxes, sample.labels, width, height)
    return (
        blended,
        np.concatenate([boxes, new_boxes]),
        np.concatenate([labels, new_labels]),
    )
