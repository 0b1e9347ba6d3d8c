"""``DetectionDataset``: validated records of one split, images decoded on demand (or cached).

Targets are checked where they enter: labels in range, boxes clipped to the image and those under
1 px dropped, with one log line per dataset giving the counts. A missing or undecodable image
stops the run by default (``on_bad_image: error``): a dataset that silently shrinks trains a
different model than the user thinks, and the check runs up front (a ``stat`` per image) so the
run fails in seconds, not hours later. ``on_bad_image: skip`` drops such images and logs how many.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detector.core.boxes import box_area, xyxy_to_xywh
from detector.data.config import DataConfig
from detector.data.formats import read_split
from detector.data.targets import (
    DataError,
    Record,
    Sample,
    SanitizeStats,
    check_labels,
    sanitize_boxes,
)

LOGGER = logging.getLogger(__name__)
REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip


class DetectionDataset:
    """Images and targets of one split.

    ``load(i)`` -> ``Sample`` (BGR uint8 ``[H, W, 3]``, boxes float32 ``[K, 4]`` xyxy pixels,
    labels int64 ``[K]``). ``category_ids[label]`` is the category id that ``coco_ground_truth``
    uses (the original ids for COCO data, ``1..C`` otherwise).
    """

    def __init__(
        self,
        records: list[Record],
        class_names: list[str],
        category_ids: list[int] | None = None,
        on_bad_image: str = "error",
        name: str = "dataset",
        cache: bool = False,
    ) -> None:
        self.class_names = list(class_names)
        self.category_ids = list(category_ids or range(1, len(class_names) + 1))
        self.on_bad_image = on_bad_image
        self.name = name
        self.records = self._validate(records)
        self.has_boxes = np.asarray([len(r.labels) > 0 for r in self.records], bool)
        self._cache: list[np.ndarray] | None = None
        self._skipped_at_load: set[int] = set()
        if cache:
            self.fill_cache()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    # ----------------------------------------------------------------------------- validation
    def _validate(self, records: list[Record]) -> list[Record]:
        stats, kept, missing = SanitizeStats(), [], []
        for record in records:
            if not record.path.is_file():
                if self.on_bad_image == "error":
                    raise DataError(f"{record.path}: image not found ({self.name})")
                missing.append(record.path)
                continue
            check_labels(record.labels, self.num_classes, str(record.path))
            boxes, labels, s, keep = sanitize_boxes(
                record.boxes, record.labels, record.width, record.height
            )
            stats.add(s)
            record.boxes, record.labels = boxes, labels
            if record.areas is not None:
                record.areas = record.areas[keep]
            kept.append(record)
        if missing:
            LOGGER.warning("%s: skipped %d missing images (first: %s)", self.name,
                           len(missing), missing[0])  # fmt: skip
        if stats.clipped or stats.dropped:
            LOGGER.info("%s: clipped %d boxes partly outside their image, dropped %d under 1 px",
                        self.name, stats.clipped, stats.dropped)  # fmt: skip
        if not kept:
            raise DataError(f"{self.name}: no usable images")
        return kept

    # -------------------------------------------------------------------------------- loading
    def read_image(self, index: int, reduce: int = 1) -> np.ndarray | None:
        """Decoded BGR uint8 image ``index`` (``reduce`` 2/4/8: decoded at 1/reduce size, far
        cheaper for JPEG), or ``None`` if it cannot be decoded. The RAM cache holds full-size
        images and ignores ``reduce``, so a cached run's pixels may differ slightly from an
        uncached run's (its boxes do not)."""
        if self._cache is not None:
            return self._cache[index]
        return cv2.imread(str(self.records[index].path), REDUCED_FLAGS[reduce])

    def load(self, index: int, reduce: int = 1) -> Sample:
        """Image ``index`` with its targets (boxes scaled when ``reduce`` > 1 shrank it)."""
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            image = self.read_image(i, reduce)
            if image is not None:
                return self._sample(i, image)
            message = f"{self.records[i].path}: cannot decode image ({self.name})"
            if self.on_bad_image == "error":
                raise DataError(message)
            if i not in self._skipped_at_load:
                self._skipped_at_load.add(i)
                LOGGER.warning("%s; skipped (%d so far in this process)", message,
                               len(self._skipped_at_load))  # fmt: skip
        raise DataError(f"{self.name}: no image could be decoded")

    def _sample(self, index: int, image: np.ndarray) -> Sample:
        record = self.records[index]
        boxes, labels = record.boxes, record.labels
        height, width = image.shape[:2]
        if record.width and record.height and (record.width, record.height) != (width, height):
            boxes = boxes * np.asarray(
                [width / record.width, height / record.height] * 2, np.float32
            )
        if len(boxes):
            boxes, labels, _, _ = sanitize_boxes(boxes, labels, width, height)
        return Sample(image, boxes, labels, record.image_id, record.path)

    def fill_cache(self, threads: int = 4) -> None:
        """Decode every image once and keep it in RAM (shared with forked workers)."""

        def read(i: int) -> np.ndarray:
            image = cv2.imread(str(self.records[i].path), cv2.IMREAD_COLOR)
            if image is None:
                if self.on_bad_image == "error":
                    raise DataError(f"{self.records[i].path}: cannot decode image ({self.name})")
                return np.full((max(self.records[i].height, 32), max(self.records[i].width, 32),
                                3), 114, np.uint8)  # fmt: skip
            return image

        with ThreadPoolExecutor(threads) as pool:
            images = list(pool.map(read, range(len(self))))
        mib = sum(im.nbytes for im in images) / 2**20
        LOGGER.info("%s: cached %d images in RAM (%.0f MiB)", self.name, len(images), mib)
        self._cache = images

    # ---------------------------------------------------------------------------- evaluation
    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` (read from the file if unknown)."""
        record = self.records[index]
        if not (record.width and record.height):
            image = self.read_image(index)
            if image is None:
                raise DataError(f"{record.path}: cannot decode image ({self.name})")
            record.height, record.width = image.shape[:2]
        return record.height, record.width

    def coco_ground_truth(self) -> dict[str, Any]:
        """The split as a COCO ground-truth dict (``bbox`` xywh, ``area``, ``iscrowd`` 0),
        category ids from ``category_ids``. COCO data keep their annotated areas (mask areas,
        which decide small/medium/large) and their ``iscrowd`` 1 regions, so the numbers match
        an evaluation against the original JSON."""
        images, annotations = [], []
        for i, record in enumerate(self.records):
            height, width = self.image_size(i)
            images.append({"id": record.image_id, "file_name": record.path.name,
                           "width": width, "height": height})  # fmt: skip
            xywh = xyxy_to_xywh(record.boxes)
            areas = box_area(record.boxes) if record.areas is None else record.areas
            for box, area, label in zip(xywh, areas, record.labels):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": record.image_id,
                    "category_id": self.category_ids[int(label)],
                    "bbox": [float(v) for v in box], "area": float(area), "iscrowd": 0,
                })  # fmt: skip
            for crowd in record.crowd:
                annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                    **crowd, "iscrowd": 1})  # fmt: skip
        categories = [{"id": cid, "name": name}
                      for cid, name in zip(self.category_ids, self.class_names)]  # fmt: skip
        return {"images": images, "annotations": annotations, "categories": categories}

    def class_counts(self) -> np.ndarray:
        """int64 ``[C]`` number of boxes per class."""
        labels = [r.labels for r in self.records]
        flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=self.num_classes)


def build_dataset(cfg: DataConfig, split: str = "train", cache: bool = False) -> DetectionDataset:
    """The ``train`` or ``val`` split of ``cfg`` as a validated ``DetectionDataset``."""
    result = read_split(cfg, split)
    if result.bad_images:
        if cfg.on_bad_image == "error":
            raise DataError(result.bad_images[0])
        LOGGER.warning("%s %s: skipped %d unreadable images (first: %s)", cfg.source, split,
                       len(result.bad_images), result.bad_images[0])  # fmt: skip
    return DetectionDataset(
        result.records,
        cfg.names,
        result.category_ids,
        on_bad_image=cfg.on_bad_image,
        name=f"{Path(cfg.source).name} {split}",
        cache=cache,
    )
