"""A generated COCO-format detection dataset: the offline default of the demo and the tests.

Each image has a textured, low-saturation background (smooth noise at two scales, clutter lines,
sensor noise) and 0-20 objects of five classes that differ in shape and hue: circles (red),
rectangles (green), triangles (blue), rings (yellow) and crosses (magenta). Objects vary in size
(8-300 px, never beyond 60 % of the image's short side), aspect, rotation and colour, may leave
the frame, and overlap: a new object may hide at most ``max_occlusion`` of an earlier one.
With ``lookalike`` every object is the same kind of pale card in any colour and its class is
only the small dark symbol printed on it (fine-grained classes, as in photos of similar products).
Everything is drawn from ``numpy.random.default_rng([seed, i])``, so a seed gives the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

CLASS_NAMES = ("circle", "rectangle", "triangle", "ring", "cross")
CLASS_HUES = (0, 60, 120, 28, 150)  # OpenCV hue (0-179) of each class, +-8 jitter
SHIFT = 4  # sub-pixel drawing: coordinates x 16


@dataclass(frozen=True)
class SynthSpec:
    """How images are drawn: sizes in pixels (``image_size`` bounds each side), counts per image."""

    image_size: tuple[int, int] = (320, 640)
    object_size: tuple[float, float] = (8.0, 300.0)
    objects: tuple[int, int] = (0, 20)
    num_classes: int = 5
    max_occlusion: float = 0.4
    relative_min: float = 0.025  # smallest object, as a fraction of the image's short side
    clutter: int = 6  # at most this many grey clutter lines in the background
    lookalike: bool = False  # classes differ only by a small symbol on a shared card

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.num_classes <= len(CLASS_NAMES),
             f"num_classes must be 1-{len(CLASS_NAMES)}"),
            (0 <= self.objects[0] <= self.objects[1],
             "objects must be [min, max], 0 <= min <= max"),
            (0 < self.object_size[0] <= self.object_size[1],
             "object_size must be [min, max], 0 < min <= max"),
            (0 < self.image_size[0] <= self.image_size[1],
             "image_size must be [min, max], 0 < min <= max"),
            (self.clutter >= 0, "clutter must be >= 0"),
            (0 <= self.relative_min < 0.6, "relative_min must be in [0, 0.6)"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(f"synthetic data: {message}, got {self}")

    @classmethod
    def easy(cls) -> SynthSpec:
        """Small images with few, large objects: learnable by a tiny model in about a minute."""
        return cls(image_size=(128, 224), object_size=(20, 120), objects=(1, 8),
                   relative_min=0.15)  # fmt: skip

    @classmethod
    def demo(cls) -> SynthSpec:
        """The demo's data: 1-6 objects of 24-160 px that a 320 input sees (>= 16 px there),
        at most 2 clutter lines. The default spec's objects go down to 4 px at 320, and 39 % of
        them are under 16 px there: too small for nano in a few minutes of training
        (benchmarks/demo_accuracy.md)."""
        return cls(image_size=(320, 480), object_size=(24, 160), objects=(1, 6),
                   relative_min=0.08, clutter=2)  # fmt: skip


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << SHIFT)).astype(np.int32)


def _background(rng: np.random.Generator, height: int, width: int, clutter: int = 6) -> np.ndarray:
    """Muted texture: coarse and fine smooth noise, at most ``clutter`` lines."""
    coarse = rng.integers(40, 220, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
    fine = rng.integers(0, 60, (rng.integers(12, 40), rng.integers(12, 40), 3)).astype(np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.addWeighted(image, 0.85, cv2.resize(fine, (width, height)), 0.5, 0)
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    image = cv2.addWeighted(image, 0.35, gray, 0.65, 0)  # low saturation: objects stand out
    for _ in range(int(rng.integers(0, clutter + 1))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        shade = int(rng.integers(60, 200))
        cv2.line(image, p1, p2, (shade, shade, shade), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


Geometry = tuple[str, Any]  # ("poly", points [P, 2]) or ("ellipse", (a, b, angle, thickness))


def _shape(
    rng: np.random.Generator, cls: int, cx: float, cy: float, size: float
) -> tuple[Geometry, list[float]]:
    """Outline of class ``cls`` (polygon points ``[P, 2]`` or an ellipse) and its xyxy box."""
    angle = math.radians(rng.uniform(-30, 30))
    aspect = rng.uniform(0.7, 1.4)
    if cls in (0, 3):  # circle / ring: ellipse, bbox of the rotated ellipse
        a, b = size / 2, size / 2 * aspect
        thickness = max(2.0, 0.22 * min(a, b)) if cls == 3 else 0.0
        ex = math.hypot(a * math.cos(angle), b * math.sin(angle)) + thickness / 2
        ey = math.hypot(a * math.sin(angle), b * math.cos(angle)) + thickness / 2
        return ("ellipse", (a, b, math.degrees(angle), thickness)), [cx - ex, cy - ey, cx + ex,
                                                                      cy + ey]  # fmt: skip
    if cls == 1:  # rectangle, aspect 0.4-2.5
        aspect = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
        w, h = size, size * aspect
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    elif cls == 2:  # triangle
        angles = np.radians([90, 210, 330]) + rng.uniform(0, 2 * math.pi)
        pts = np.stack([np.cos(angles) * size / 2, np.sin(angles) * size / 2 * aspect], 1)
    else:  # cross: two bars
        t, s = size * rng.uniform(0.22, 0.34) / 2, size / 2
        pts = np.array([[-t, -s], [t, -s], [t, -t], [s, -t], [s, t], [t, t], [t, s], [-t, s],
                        [-t, t], [-s, t], [-s, -t], [-t, -t]])  # fmt: skip
        pts[:, 1] *= aspect
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T + (cx, cy)
    return ("poly", pts), [*pts.min(0), *pts.max(0)]


def _card(
    rng: np.random.Generator, cx: float, cy: float, size: float
) -> tuple[Geometry, list[float], float]:
    """A slightly rotated, near-square card: (polygon, xyxy box, its shorter side)."""
    angle = math.radians(rng.uniform(-20, 20))
    w, h = size, size * rng.uniform(0.8, 1.25)
    pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T + (cx, cy)
    return ("poly", pts), [*pts.min(0), *pts.max(0)], min(w, h)


def _color(rng: np.random.Generator, hue: int, saturation: tuple[int, int],
           value: tuple[int, int]) -> tuple[int, ...]:  # fmt: skip
    hsv = np.uint8([[[hue % 180, rng.integers(*saturation), rng.integers(*value)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _draw(
    image: np.ndarray, geometry: Geometry, cx: float, cy: float, color: tuple[int, ...]
) -> None:
    kind, params = geometry
    if kind == "poly":
        cv2.fillPoly(image, [_fixed(params)], color, cv2.LINE_AA, SHIFT)
        return
    a, b, angle, thickness = params
    centre = tuple(int(v) for v in _fixed(np.array([cx, cy])))
    axes = tuple(int(v) for v in _fixed(np.array([a, b])))
    width = -1 if thickness == 0 else max(1, int(round(thickness)))
    cv2.ellipse(image, centre, axes, angle, 0, 360, color, width, cv2.LINE_AA, SHIFT)


def _occludes(new: np.ndarray, boxes: list[np.ndarray], limit: float) -> bool:
    """Would ``new`` hide more than ``limit`` of an earlier box, or overlap mostly itself?"""
    for old in boxes:
        iw = min(new[2], old[2]) - max(new[0], old[0])
        ih = min(new[3], old[3]) - max(new[1], old[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        if inter > limit * (old[2] - old[0]) * (old[3] - old[1]) or inter > limit * (
            new[2] - new[0]
        ) * (new[3] - new[1]):
            return True
    return False


def synth_image(
    rng: np.random.Generator, spec: SynthSpec = SynthSpec()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One generated image: (BGR uint8 ``[H, W, 3]``, boxes float32 ``[K, 4]`` xyxy clipped to
    the image, labels int64 ``[K]``)."""
    height = int(rng.integers(spec.image_size[0], spec.image_size[1] + 1))
    width = int(rng.integers(spec.image_size[0], spec.image_size[1] + 1))
    image = _background(rng, height, width, spec.clutter)
    short = min(height, width)
    lo = max(spec.object_size[0], spec.relative_min * short)
    hi = max(lo, min(spec.object_size[1], 0.6 * short))
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(spec.objects[0], spec.objects[1] + 1))):
        cls = int(rng.integers(spec.num_classes))
        for _attempt in range(20):
            size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if spec.lookalike:
                geometry, box, side = _card(rng, cx, cy, size)
            else:
                geometry, box = _shape(rng, cls, cx, cy, size)
            box = np.clip(np.asarray(box, np.float32), 0, [width, height, width, height])
            sides = (box[2] - box[0], box[3] - box[1])
            if min(sides) < 0.5 * lo or max(sides) < spec.object_size[0]:
                continue  # mostly out of frame
            if not _occludes(box, boxes, spec.max_occlusion):
                break
        else:
            continue
        if spec.lookalike:  # a pale card of any hue, the class only in its dark symbol
            _draw(image, geometry, cx, cy, _color(rng, int(rng.integers(180)), (30, 110),
                                                  (170, 241)))  # fmt: skip
            symbol, _ = _shape(rng, cls, cx, cy, 0.45 * side)
            _draw(image, symbol, cx, cy, _color(rng, int(rng.integers(180)), (0, 80), (20, 81)))
        else:
            hue = CLASS_HUES[cls] + int(rng.integers(-8, 9))
            _draw(image, geometry, cx, cy, _color(rng, hue, (140, 256), (140, 256)))
        boxes.append(box)
        labels.append(cls)
    noise = rng.integers(-6, 7, image.shape, dtype=np.int16)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    if not boxes:
        return image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    return image, np.stack(boxes).astype(np.float32), np.asarray(labels, np.int64)


def synth_header(images: int, seed: int, spec: SynthSpec) -> str:
    """The first line of a generated ``data.yaml``: what made it (to tell a stale set apart)."""
    return f"# generated by 'detector data synth' (images={images}, seed={seed}, {spec})\n"


def make_synthetic_dataset(
    out_dir: str | Path,
    images: int = 500,
    seed: int = 0,
    spec: SynthSpec = SynthSpec(),
    val_fraction: float = 0.2,
    jpeg_quality: int = 92,
) -> Path:
    """Write ``images`` generated images (COCO JSON, train/val split) and ``out_dir/data.yaml``;
    returns the path of ``data.yaml``. Small easy sets for tests: ``SynthSpec.easy()`` or e.g.
    ``SynthSpec(image_size=(96, 128), object_size=(24, 64), objects=(1, 4), num_classes=3)``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    names = list(CLASS_NAMES[: spec.num_classes])
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names)]
    num_val = min(max(1, round(images * val_fraction)), images - 1) if images > 1 else 0
    splits: dict[str, dict[str, list]] = {
        s: {"images": [], "annotations": [], "categories": categories} for s in ("train", "val")
    }
    ann_id = 0
    for i in range(images):
        image, boxes, labels = synth_image(np.random.default_rng([seed, i]), spec)
        file_name = f"{i:06d}.jpg"
        cv2.imwrite(
            str(out / "images" / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        )
        split = splits["val" if i >= images - num_val else "train"]
        split["images"].append({"id": i + 1, "file_name": file_name, "width": image.shape[1],
                                "height": image.shape[0]})  # fmt: skip
        for box, label in zip(boxes.tolist(), labels.tolist()):
            ann_id += 1
            w, h = box[2] - box[0], box[3] - box[1]
            split["annotations"].append({
                "id": ann_id, "image_id": i + 1, "category_id": label + 1,
                "bbox": [round(box[0], 2), round(box[1], 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": 0,
            })  # fmt: skip
    for name, data in splits.items():
        (out / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    config = {
        "format": "coco",
        "root": ".",
        "train": "annotations/instances_train.json",
        "val": "annotations/instances_val.json",
        "images": "images",
        "names": names,
    }
    header = synth_header(images, seed, spec)
    path = out / "data.yaml"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
