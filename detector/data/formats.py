"""Readers for the three annotation formats: COCO JSON, YOLO txt, VOC XML -> ``Record`` lists.

Each reader returns raw pixel boxes (not yet clipped) and contiguous labels ``0..C-1``; the
dataset validates and clips them. Errors are ``DataError`` naming the file and the line,
annotation id or object at fault.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.core.boxes import cxcywh_to_xyxy, xywh_to_xyxy
from detector.core.media import IMAGE_SUFFIXES
from detector.data.config import DataConfig
from detector.data.targets import DataError, Record, check_labels, empty_targets

LOGGER = logging.getLogger(__name__)


@dataclass
class ReadResult:
    """Records of one split, the category id of each contiguous label, and the images that
    could not be opened while reading (only the YOLO reader opens images)."""

    records: list[Record]
    category_ids: list[int]
    bad_images: list[str] = field(default_factory=list)


def read_split(cfg: DataConfig, split: str) -> ReadResult:
    """Read the ``train`` or ``val`` split of ``cfg``."""
    value = cfg.split(split)
    if cfg.format == "coco":
        return read_coco(_coco_json(cfg, value), _image_dir(cfg, split), cfg.names)
    if cfg.format == "voc":
        return read_voc(cfg.root, value, _image_dir(cfg, split), cfg.names)
    return read_yolo(cfg.root, value, cfg.names)


def _image_dir(cfg: DataConfig, split: str) -> Path:
    return cfg.root / cfg.images.format(split=split)


def _coco_json(cfg: DataConfig, value: str) -> Path:
    path = cfg.root / value
    if path.is_file():
        return path
    guess = cfg.root / "annotations" / f"instances_{value}.json"
    if guess.is_file():
        return guess
    raise DataError(f"{cfg.source}: COCO annotation file '{value}' not found under {cfg.root}")


# ---------------------------------------------------------------------------------------- COCO
def read_coco(json_path: Path, image_dir: Path, names: list[str]) -> ReadResult:
    """COCO JSON -> records; category ids (any, non-contiguous) map to labels in id order."""
    try:
        data = json.loads(Path(json_path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{json_path}: cannot read COCO JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{json_path}: missing '{key}'")
    category_ids = sorted(int(c["id"]) for c in data["categories"])
    json_names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    if names and len(names) != len(category_ids):
        raise DataError(
            f"{json_path}: {len(category_ids)} categories but the config names {len(names)}"
        )
    if names and [json_names[i] for i in category_ids] != list(names):
        LOGGER.warning("%s: category names differ from the config's names", json_path)
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    per_image: dict[int, tuple[list[list[float]], list[int], list[float], list[dict]]] = {}
    sizes: dict[int, tuple[str, int, int]] = {}
    for image in data["images"]:
        try:
            sizes[int(image["id"])] = (
                str(image["file_name"]),
                int(image.get("width", 0)),
                int(image.get("height", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{json_path}: image entry {image!r} is malformed ({exc})") from exc
        per_image[int(image["id"])] = ([], [], [], [])
    for ann in data["annotations"]:
        ann_id = ann.get("id", "?")
        image_id = ann.get("image_id")
        if image_id not in per_image:
            raise DataError(f"{json_path}: annotation id {ann_id}: unknown image_id {image_id}")
        cid = ann.get("category_id")
        if cid not in label_of:
            raise DataError(
                f"{json_path}: annotation id {ann_id}: category_id {cid} is not in categories "
                f"{category_ids}"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{json_path}: annotation id {ann_id}: bbox must be [x, y, w, h]")
        bbox = [float(v) for v in bbox]
        area = float(ann.get("area", bbox[2] * bbox[3]))
        if ann.get("iscrowd", 0):  # not a target; kept for evaluation as an ignore region
            per_image[image_id][3].append({"category_id": cid, "bbox": bbox, "area": area})
            continue
        per_image[image_id][0].append(bbox)
        per_image[image_id][1].append(label_of[cid])
        per_image[image_id][2].append(area)

    records = []
    for image_id, (file_name, width, height) in sizes.items():
        xywh, labels, areas, crowd = per_image[image_id]
        if xywh:
            boxes = xywh_to_xyxy(np.asarray(xywh, np.float32))
            labels_np = np.asarray(labels, np.int64)
        else:
            boxes, labels_np = empty_targets()
        records.append(Record(image_dir / file_name, image_id, boxes, labels_np, width, height,
                              np.asarray(areas, np.float32), crowd))  # fmt: skip
    return ReadResult(records, category_ids)


# ----------------------------------------------------------------------------------------- VOC
def read_voc(root: Path, split: str, image_dir: Path, names: list[str]) -> ReadResult:
    """VOC: ``root/ImageSets/Main/<split>.txt`` lists ids, ``root/Annotations/<id>.xml`` holds
    the boxes (used as written: VOC corners, no -1 shift, so COCO conversions agree)."""
    list_file = root / split if split.endswith(".txt") else root / "ImageSets/Main" / f"{split}.txt"
    try:
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"{list_file}: cannot read image list ({exc.strerror})") from exc
    label_of = {name: i for i, name in enumerate(names)}
    records = []
    for index, stem in enumerate(ids):
        xml_path = root / "Annotations" / f"{stem}.xml"
        records.append(_read_voc_xml(xml_path, stem, image_dir, label_of, index + 1))
    return ReadResult(records, list(range(1, len(names) + 1)))


def _read_voc_xml(
    xml_path: Path, stem: str, image_dir: Path, label_of: dict[str, int], image_id: int
) -> Record:
    try:
        tree = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"{xml_path}: cannot read VOC annotation ({exc})") from exc
    file_name = tree.findtext("filename") or f"{stem}.jpg"
    width = int(float(tree.findtext("size/width") or 0))
    height = int(float(tree.findtext("size/height") or 0))
    boxes, labels = [], []
    for k, obj in enumerate(tree.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in label_of:
            raise DataError(
                f"{xml_path}: object {k} ('{name}'): class not in names {list(label_of)}"
            )
        try:
            box = [float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{xml_path}: object {k} ('{name}'): malformed bndbox") from exc
        boxes.append(box)
        labels.append(label_of[name])
    if boxes:
        boxes_np, labels_np = np.asarray(boxes, np.float32), np.asarray(labels, np.int64)
    else:
        boxes_np, labels_np = empty_targets()
    return Record(image_dir / file_name, image_id, boxes_np, labels_np, width, height)


# ---------------------------------------------------------------------------------------- YOLO
def read_yolo(root: Path, split: str, names: list[str]) -> ReadResult:
    """YOLO txt: ``split`` is an image folder (or a .txt list of images) under ``root``; each
    image's labels are in the parallel ``labels/`` folder, one ``class cx cy w h`` line per box,
    normalised to 0-1 (a ``class x1 y1 x2 y2 ...`` polygon line counts as its box). An image
    without a label file has no boxes."""
    from PIL import Image  # header reads only: the size is needed to turn 0-1 into pixels

    images = _yolo_images(root, split)
    records, bad = [], []
    for index, image_path in enumerate(images):
        boxes, labels = _read_yolo_txt(_yolo_label_path(image_path), len(names))
        try:
            with Image.open(image_path) as im:
                width, height = im.size
        except (OSError, ValueError) as exc:
            bad.append(f"{image_path}: cannot read image ({exc})")
            continue
        boxes = cxcywh_to_xyxy(boxes) * np.asarray([width, height, width, height], np.float32)
        records.append(Record(image_path, index + 1, boxes, labels, width, height))
    return ReadResult(records, list(range(1, len(names) + 1)), bad)


def _yolo_images(root: Path, split: str) -> list[Path]:
    path = root / split
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [(root / line) if not Path(line).is_absolute() else Path(line) for line in lines]
    raise DataError(f"{path}: YOLO split is neither an image folder nor a .txt list")


def _yolo_label_path(image_path: Path) -> Path:
    parts = list(image_path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_yolo_txt(txt: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``class cx cy w h`` lines -> (normalised cxcywh float32 ``[K, 4]``, int64 ``[K]``)."""
    if not txt.is_file():
        return empty_targets()
    rows, labels = [], []
    for lineno, line in enumerate(txt.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
                raise ValueError
            cls = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(
                f"{txt}:{lineno}: malformed line {line.strip()!r}, expected 'class cx cy w h' "
                "(or 'class x1 y1 x2 y2 x3 y3 ...', a polygon)"
            ) from None
        if len(values) > 4:  # a segmentation polygon, as Ultralytics allows: use its box
            xs, ys = values[0::2], values[1::2]
            values = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2,
                      max(xs) - min(xs), max(ys) - min(ys)]  # fmt: skip
        check_labels(np.asarray([cls]), num_classes, f"{txt}:{lineno}")
        rows.append(values)
        labels.append(cls)
    if not rows:
        return empty_targets()
    return np.asarray(rows, np.float32), np.asarray(labels, np.int64)
