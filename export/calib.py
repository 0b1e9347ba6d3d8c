"""Calibration images for INT8: real images, pre-processed exactly as serving does.

The images come from a dataset config (its ``train`` split, so the validation images that
``--eval`` scores stay unseen) or from a directory. Each is read with OpenCV and passed through
:func:`detector.core.preprocess.preprocess` at the model's input size: the one function that
evaluation, export checks and serving use, so the ranges calibrated here are the ranges the
deployed model sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from detector.core.media import IMAGE_SUFFIXES
from detector.core.preprocess import preprocess

CONFIG_SUFFIXES = (".yaml", ".yml")

Progress = Callable[[int, int], None]  # (images done, images in all)


class CalibrationError(ValueError):
    """The calibration source is missing, empty or unreadable; the message names it."""


def calibration_images(source: str | Path, count: int | None = None) -> list[Path]:
    """Image paths to calibrate on.

    Args:
        source: a dataset config YAML (its ``train`` split is used) or a directory of images
            (searched recursively).
        count: how many to use; spread evenly over the sorted list so that a dataset ordered by
            scene or class is sampled across its whole length. ``None``: all of them.

    Returns:
        ``count`` (or fewer, when the source has fewer) paths.
    """
    source = Path(source)
    if not source.exists():
        raise CalibrationError(
            f"{source}: calibration source not found (a dataset YAML or an image directory)"
        )
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise CalibrationError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    elif source.suffix.lower() in CONFIG_SUFFIXES:
        from detector.data import build_dataset, load_data_config

        dataset = build_dataset(load_data_config(source), "train")
        paths = sorted(record.path for record in dataset.records)
    else:
        raise CalibrationError(
            f"{source}: expected a dataset config (.yaml) or a directory of images"
        )
    if count is not None:
        if count < 1:
            raise CalibrationError(f"the number of calibration images must be >= 1, got {count}")
        if count < len(paths):
            picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
            paths = [paths[i] for i in picks]
    return paths


def load_calibration_batch(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Read and pre-process images: -> ``[B, 3, H, W]`` float32, BGR 0-255, letterboxed."""
    arrays = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationError(f"{path}: cannot read this calibration image")
        arrays.append(preprocess(image, size)[0])
    return np.stack(arrays)


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ONNX Runtime's calibrators one batch at a time (``{input_name: [B, 3, H, W]}``).

    ``batch`` is the model's fixed batch size (images are repeated to fill the last batch) or 1
    for a dynamic-batch model. ``progress`` is called after every batch.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: tuple[int, int],
        input_name: str = "images",
        batch: int = 1,
        progress: Progress | None = None,
    ) -> None:
        if not paths:
            raise CalibrationError("no calibration images")
        self.paths = list(paths)
        self.size = size
        self.input_name = input_name
        self.batch = max(int(batch), 1)
        self.progress = progress
        self._start, self._end = 0, len(self.paths)
        self._next = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only images ``start_index:end_index`` from now on (calibration in chunks)."""
        self._start, self._end = start_index, min(end_index, len(self.paths))
        self._next = self._start

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        stop = min(self._next + self.batch, self._end)
        chunk = self.paths[self._next : stop]
        chunk = chunk + [chunk[-1]] * (self.batch - len(chunk))  # fill a fixed batch
        images = load_calibration_batch(chunk, self.size)
        self._next = stop
        if self.progress is not None:
            self.progress(stop, len(self.paths))
        return {self.input_name: images}
