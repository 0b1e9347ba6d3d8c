"""Pre-processing shared by evaluation, export verification and serving (torch-free).

YOLOX feeds its network a letterboxed image: resized to fit the input keeping its aspect ratio,
placed at the top-left corner of a canvas filled with 114, kept in BGR channel order as float
0-255 with no mean/std normalisation. This module is the one place that does it, so training-time
evaluation, the exported model's check and the server can never drift apart. It imports numpy and
OpenCV only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes network input; artefacts store it as metadata (``to_dict``)."""

    input_height: int
    input_width: int
    pad_value: int = PAD_VALUE
    channel_order: str = "BGR"
    placement: str = "top-left"
    scale: str = "0-255"

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int | str]) -> PreprocessSpec:
        return cls(**data)  # type: ignore[arg-type]


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``640`` or ``(h, w)`` -> ``(h, w)``."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def letterbox_ratio(image_hw: tuple[int, int], size: int | tuple[int, int]) -> float:
    """Scale factor that fits an image of ``image_hw`` into ``size`` keeping its aspect ratio."""
    height, width = as_size(size)
    return min(height / image_hw[0], width / image_hw[1])


def letterbox(
    image: np.ndarray, size: int | tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, float]:
    """Resize ``image`` (``[H, W, 3]`` uint8 BGR) into a ``size`` canvas, top-left, padded.

    Returns the ``[h, w, 3]`` uint8 canvas and the ratio ``r`` such that a point ``p`` of the
    original image lands at ``p * r`` on the canvas.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"letterbox expects an [H, W, 3] image, got shape {image.shape}")
    height, width = as_size(size)
    ratio = letterbox_ratio(image.shape[:2], (height, width))
    # at least one pixel: a very thin image (8 x 257 into 32) would otherwise resize to nothing
    new_w, new_h = max(int(image.shape[1] * ratio), 1), max(int(image.shape[0] * ratio), 1)
    canvas = np.full((height, width, 3), pad_value, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[:new_h, :new_w] = resized
    return canvas, ratio


def to_chw_float(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> contiguous ``[3, H, W]`` float32, values 0-255 (no normalisation)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def preprocess(
    image: np.ndarray, size: int | tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, float]:
    """Letterbox then lay out for the network: ``[H, W, 3]`` BGR uint8 -> (``[3, h, w]`` float32,
    ratio). Equal to YOLOX's ``preproc``."""
    canvas, ratio = letterbox(image, size, pad_value)
    return to_chw_float(canvas), ratio


def boxes_to_original(boxes: np.ndarray, ratio: float, original_hw: tuple[int, int]) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes from letterboxed input pixels back to the original image,
    clipped to its ``(height, width)``."""
    out = np.asarray(boxes, dtype=np.float32) / ratio
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, original_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, original_hw[0])
    return out
